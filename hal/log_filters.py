"""Lines other packages log that read like news to a robot operator but are not: dropped by filters on their
loggers (a filter on a logger sees only records logged on that logger itself, not its children's)."""

from __future__ import annotations

import logging


class DropLines(logging.Filter):
    """Drops the records whose message starts with one of ``starts``."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


# lerobot's keyboards, on a machine without an X display: pynput's multi-line import error (on its own logger and on
# root) and a warning, before fleetloop says the same in one line with what to do (edge.keys, hal.lerobot_teleop).
_NO_PYNPUT = DropLines("Could not import pynput keyboard backend", "Keyboard controls unavailable")


def quiet_lerobot_keyboards() -> None:
    """Installs the filter for lerobot's keyboard lines (idempotent: a logger keeps one copy of a filter)."""
    for name in ("", "lerobot.utils.keyboard_input"):
        logging.getLogger(name).addFilter(_NO_PYNPUT)
