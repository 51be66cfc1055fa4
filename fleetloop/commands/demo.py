"""``fleetloop demo``: the whole loop on this machine (cloud, simulated robots, live table)."""

from __future__ import annotations

import argparse
import logging

from fleetloop.commands.config_flags import DEMO_FLAGS, flag_error
from hal.config import ConfigError

log = logging.getLogger("fleetloop")


def cmd_demo(args: argparse.Namespace) -> int:
    from fleetloop.demo import DemoConfig, run_demo

    try:
        config = DemoConfig(
            robots=args.robots,
            task=args.task,
            minutes=args.minutes,
            control_hz=args.hz,
            run_dir=args.run_dir,
            seed=args.seed,
            target_success=args.target,
            warm_start=args.warm_start,
            gripper_choice=args.gripper_choice,
            stop_at_target=args.stop_at_target,
            schedule=args.schedule,
            round_episodes=args.round_episodes,
        )
    except ConfigError as err:
        log.error("refusing to start: %s", flag_error(err, DEMO_FLAGS))
        return 2
    return run_demo(config)


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole loop on this machine: cloud, simulated robots, live table")
    demo.add_argument("--robots", type=int, default=2)
    demo.add_argument(
        "--task",
        choices=["panda_pick_cube", "panda_pick_cube_camera"],
        default="panda_pick_cube",
        help="panda_pick_cube (default; the robots observe the cube's position) or panda_pick_cube_camera (they see "
        "it only through a camera from above: the learner trains a CNN)",
    )
    demo.add_argument("--minutes", type=float, default=6.0, help="time limit for the run")
    demo.add_argument("--hz", type=float, default=10.0)
    demo.add_argument("--run-dir", default=None, help="default runs/<timestamp>")
    demo.add_argument("--seed", type=int, default=0, help="the robots' and the learner's seed: runs with one repeat")
    demo.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="train every version from a fresh policy (the learner's behaviour before warm starts), to compare",
    )
    demo.add_argument(
        "--regressed-gripper",
        dest="gripper_choice",
        action="store_false",
        help="the learner regresses the gripper command like the arm's motion instead of choosing among open, stay "
        "and close (the policy before choices), to compare",
    )
    demo.add_argument(
        "--no-stop-at-target",
        dest="stop_at_target",
        action="store_false",
        help="run the whole --minutes even once the rolling success reached the target, to see a skill stay learned",
    )
    demo.add_argument(
        "--schedule",
        choices=["async", "sync"],
        default="async",
        help="async (default): the robots never stop and the learner trains between versions; sync, to compare: "
        "each robot runs its share of --round-episodes with a version, then holds until the learner pushes the next",
    )
    demo.add_argument(
        "--target",
        type=float,
        default=0.8,
        help="stop once the autonomous success over the last 20 episodes reaches this (default 0.8)",
    )
    demo.add_argument("--round-episodes", type=int, default=5, help="finished episodes between two policy versions")
    demo.set_defaults(func=cmd_demo)
