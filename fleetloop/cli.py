"""The ``fleetloop`` command: its parser gathers one subcommand per module of ``fleetloop.commands``."""

from __future__ import annotations

import argparse
import os
import sys

from fleetloop.commands import certs, cloud, demo, devices, edge, export, fleet, import_, learner, policy
from fleetloop.commands.arg_types import attach_shared_data
from fleetloop.logs import setup_logging

# In the order `fleetloop --help` lists them.
COMMANDS = (cloud, learner, edge, fleet, policy, devices, certs, export, import_, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetloop",
        description="A fleet of robots that learns while it works: run the cloud (gateway, store, learner), an edge "
        "agent per robot, and watch or steer the fleet. Start with 'fleetloop demo'.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    attach_shared_data(args)
    os.environ.setdefault("MUJOCO_GL", "egl")
    setup_logging(args.log_level, plain=args.command in ("cloud", "edge") and not sys.stderr.isatty())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
