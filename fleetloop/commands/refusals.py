"""How a short command refuses a bad request: one line an operator can act on, and exit status 2.

Only for commands that do one thing and end (devices, policy, certs, export, import): a ``ValueError`` from
them names what was wrong. Long-running commands (cloud, edge, learner) check their flags before starting and
let a later error show its traceback."""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable

log = logging.getLogger("fleetloop")

Command = Callable[[argparse.Namespace], int]


def refuses_bad_input(label: str) -> Callable[[Command], Command]:
    """Logs a ``ValueError`` (or ``FileExistsError``) as "<label>: <why>" and exits 2; ``label`` is formatted
    with the command's arguments, e.g. "devices {action}"."""

    def wrap(command: Command) -> Command:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            try:
                return command(args)
            except (ValueError, FileExistsError) as err:
                log.error("%s: %s", label.format(**vars(args)), err)
                return 2

        return run

    return wrap
