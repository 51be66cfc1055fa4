"""Logging set-up: readable lines for operators, on a terminal (rich) or in a file."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", plain: bool = False) -> None:
    if plain or not sys.stderr.isatty():
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    else:
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, log_time_format="%H:%M:%S")
    logging.basicConfig(level=level, handlers=[handler], force=True)
