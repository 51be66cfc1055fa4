"""Keys on the robot's own machine as a person's signals, HIL-SERL style (as gym_hil and lerobot's keyboard_ee
map them): one key takes over and hands back, others end the episode with a label or say the scene is reset.

Keys are read by lerobot's own listener (``create_key_listener``): pynput on this machine's X display (the robot's
desktop session, or Xvfb), else the terminal the edge runs in; each press counts once, however short.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Mapping
from typing import Any

from edge.operator import Signal
from hal.log_filters import quiet_lerobot_keyboards

log = logging.getLogger("fleetloop.edge")

TOGGLE = "toggle"  # the take over / hand back key: which of the two it means depends on who drives now
KeyAction = Signal | str  # a Signal, or TOGGLE
DEFAULT_KEYS: dict[str, KeyAction] = {
    "space": TOGGLE,  # gym_hil's intervention key
    "s": Signal.SUCCESS,  # lerobot keyboard_ee's
    "q": Signal.FAILURE,  # lerobot keyboard_ee's "terminate without success"
    "r": Signal.RERECORD,
    "enter": Signal.SCENE_READY,
}
SHOWN = {"space": "space", "enter": "Enter"}  # how a key is named to a person


class NoKeyboardError(RuntimeError):
    """Keys cannot be read here: no X display and no terminal."""


class KeySignals:
    """A pynput listener that turns key presses into a person's signals; ``take`` never blocks."""

    def __init__(self, keys: Mapping[str, KeyAction] = DEFAULT_KEYS) -> None:
        self.keys = dict(keys)
        self._pressed: queue.SimpleQueue[KeyAction] = queue.SimpleQueue()
        self._listener: Any = None

    def start(self) -> None:
        """Starts listening; NoKeyboardError saying why keys cannot be read on this machine."""
        quiet_lerobot_keyboards()  # its lines say what NoKeyboardError below says, less plainly
        from lerobot.utils.keyboard_input import create_key_listener

        self._listener = create_key_listener(self._on_key, controls_help=self.describe())
        if self._listener is None:
            raise NoKeyboardError(f"keys cannot be read here: {no_display()}, and stdin is not a terminal")

    def describe(self) -> str:
        return ", ".join(f"{SHOWN.get(key, key)}: {action}" for key, action in self.keys.items())

    def help(self, action: KeyAction) -> str:
        """How a person gives ``action`` ("press Enter"); "" when no key gives it."""
        keys = [SHOWN.get(key, key) for key, bound in self.keys.items() if bound == action]
        return f"press {' or '.join(keys)}" if keys else ""

    def _on_key(self, name: str) -> None:
        action = self.keys.get(name.lower())
        if action is not None:
            self._pressed.put(action)

    def take(self) -> list[KeyAction]:
        actions: list[KeyAction] = []
        while not self._pressed.empty():
            actions.append(self._pressed.get_nowait())
        return actions

    def close(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                listener.stop()
            except Exception as err:  # noqa: BLE001 (pynput's X connection may close under a listener that just started)
                log.debug("the key listener was already going away: %s", err)


def no_display() -> str:
    """That pynput has no X display here, in words, with what to do about it."""
    display, wayland = os.environ.get("DISPLAY"), os.environ.get("WAYLAND_DISPLAY")
    return (
        f"there is no X display (DISPLAY={display!r}, WAYLAND_DISPLAY={wayland!r}); run the edge in the robot's X11 "
        "desktop session, or under Xvfb with DISPLAY set"
    )
