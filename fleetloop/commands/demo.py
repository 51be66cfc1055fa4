"""``fleetloop demo``: the whole loop on this machine (cloud, simulated robots, live table)."""

from __future__ import annotations

import argparse

from fleetloop.commands.arg_types import positive_float, positive_int


def cmd_demo(args: argparse.Namespace) -> int:
    from fleetloop.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(robots=args.robots, minutes=args.minutes, control_hz=args.hz, run_dir=args.run_dir))


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole loop on this machine: cloud, simulated robots, live table")
    demo.add_argument("--robots", type=positive_int, default=2)
    demo.add_argument("--minutes", type=positive_float, default=6.0, help="time limit for the run")
    demo.add_argument("--hz", type=positive_float, default=10.0)
    demo.add_argument("--run-dir", default=None, help="default runs/<timestamp>")
    demo.set_defaults(func=cmd_demo)
