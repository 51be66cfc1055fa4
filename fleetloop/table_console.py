"""The rich console tables are printed on: the terminal's width, or a wide one when the output goes to a pipe or
a file (rich would otherwise cut every table at 80 columns, or at a stray COLUMNS)."""

from __future__ import annotations

from rich.console import Console

PIPED_WIDTH = 200  # the fleet table's nine columns with long ids fit


def table_console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)
