"""The ``fleetloop`` command: cloud, edge, learner and demo."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from launch.logs import setup_logging

log = logging.getLogger("fleetloop")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- cloud -----------------------------------------------------------------------------------------


def add_learner_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--first-round-episodes",
        type=_positive_int,
        default=2,
        help="demonstrations to wait for before the first version (default 2)",
    )
    parser.add_argument(
        "--round-episodes", type=_positive_int, default=5, help="new finished episodes between versions (default 5)"
    )
    parser.add_argument("--train-steps", type=_positive_int, default=1500, help="gradient steps per version")


def learner_config(args: argparse.Namespace):
    from cloud.learner import LearnerConfig

    return LearnerConfig(
        first_round_episodes=args.first_round_episodes, round_episodes=args.round_episodes, train_steps=args.train_steps
    )


def run_learner(root: str, config, stop: threading.Event | None = None, log_plain: bool = True) -> None:
    setup_logging(plain=log_plain)
    import torch

    from cloud.learner import HGDaggerLearner
    from cloud.registry import PolicyRegistry
    from cloud.store import EpisodeStore

    torch.set_num_threads(1)  # two cores are shared with the gateway and the robots
    stop = stop or _stop_on_signals()
    store = EpisodeStore(Path(root) / "store", read_only=True)
    HGDaggerLearner(store, PolicyRegistry(Path(root) / "registry"), config).run(stop)


def _learner_process(root: str, config) -> None:
    run_learner(root, config)


def load_tasks(path: str):
    """Tasks from YAML: a list of {name, policy, instruction, count, requires: {kind, embodiment, ...}}."""
    import yaml

    from cloud.fleet import Requirements, Task

    entries = yaml.safe_load(Path(path).read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of tasks")
    tasks = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"tasks[{i}]: expected a mapping")
        unknown = set(entry) - {"name", "policy", "instruction", "count", "requires"}
        if unknown:
            raise ValueError(f"tasks[{i}].{sorted(unknown)[0]}: unknown key")
        requires = entry.get("requires") or {}
        try:
            tasks.append(
                Task(
                    name=str(entry.get("name", "")),
                    policy_name=str(entry.get("policy", "")),
                    instruction=str(entry.get("instruction", "")),
                    count=int(entry.get("count", 1)),
                    requires=Requirements(
                        kind=requires.get("kind", ""),
                        embodiment=requires.get("embodiment", ""),
                        observations=tuple(requires.get("observations", ())),
                        cameras=tuple(requires.get("cameras", ())),
                        min_control_hz=float(requires.get("min_control_hz", 0.0)),
                    ),
                )
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"tasks[{i}]: {err}") from err
    return tuple(tasks)


def cmd_cloud(args: argparse.Namespace) -> int:
    if not _is_loopback(args.host):
        log.error(
            "refusing to listen on %s: without TLS and device authentication fleetloop listens on "
            "loopback only (use --host 127.0.0.1)",
            args.host,
        )
        return 2
    from cloud.gateway import GatewayConfig, serve
    from cloud.registry import PolicyRegistry
    from cloud.store import EpisodeStore

    root = Path(args.root)
    store = EpisodeStore(root / "store")
    registry = PolicyRegistry(root / "registry")
    learner = None
    if not args.no_learner:
        context = multiprocessing.get_context("spawn")
        learner = context.Process(
            target=_learner_process, args=(str(root), learner_config(args)), name="learner", daemon=True
        )
        learner.start()
    try:
        tasks = load_tasks(args.tasks) if args.tasks else ()
    except (OSError, ValueError) as err:
        log.error("--tasks: %s", err)
        return 2
    config = GatewayConfig(
        host=args.host,
        port=args.port,
        max_batch_bytes=int(args.max_batch_mb * 1024 * 1024),
        tasks=tasks,
        lost_after_s=args.lost_after,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, store, registry, stop)

    log.info("cloud data in %s (episode store %s, registry %s)", root, root / "store", root / "registry")
    try:
        asyncio.run(main())
    finally:
        if learner is not None:
            learner.terminate()
            learner.join(timeout=5)
    log.info("cloud stopped")
    return 0


def cmd_learner(args: argparse.Namespace) -> int:
    run_learner(args.root, learner_config(args), log_plain=False)
    return 0


# ---- edge ------------------------------------------------------------------------------------------


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


DRIVERS = "sim:<task>, ros2:<robot.yaml> or lerobot:<config.yaml>"


def build_driver(robot: str, seed: int | None, control_hz: float | None):
    """``sim:<task>`` -> a simulated robot; ``ros2:<robot.yaml>`` -> a robot behind ROS 2 topics;
    ``lerobot:<config.yaml>`` -> any lerobot Robot, by config alone.

    Returns (driver, source, task name for the operator lookup)."""
    kind, _, name = robot.partition(":")
    if kind == "sim":
        from hal.sim import SIM_TASKS, SimRobot

        if name not in SIM_TASKS:
            raise ValueError(f"--robot: unknown sim task {name!r}; available: {', '.join(sorted(SIM_TASKS))}")
        kwargs = {"seed": seed}
        if control_hz:
            kwargs["control_hz"] = control_hz
        return SimRobot(name, **kwargs), "sim", name
    if kind == "lerobot":
        import yaml

        from hal.lerobot_robot import make_lerobot_robot

        try:
            config = yaml.safe_load(Path(name).read_text())
        except OSError as err:
            raise ValueError(f"--robot: cannot read {name!r}: {err}") from err
        if not isinstance(config, dict):
            raise ValueError(f"--robot: {name} must hold a mapping with at least 'type'")
        if control_hz:
            config.setdefault("control_hz", control_hz)
        return make_lerobot_robot(config), "robot", str(config.get("type", ""))
    if kind == "ros2":
        # Fast DDS reads its profile once, at the first rclpy.init: the shipped one gives images a 16 MB
        # shared-memory segment (about 3 ms for 640x480 instead of about 14 ms).
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(Path(__file__).parent / "ros2" / "fastdds_shm.xml"))
        from hal.ros2 import Ros2Robot, Ros2RobotConfig

        config = Ros2RobotConfig.from_yaml(name)
        return Ros2Robot(config), "robot", config.embodiment
    raise ValueError(f"--robot: unknown driver {kind!r} in {robot!r}; available: {DRIVERS}")


def with_safety(driver, resource_id: str, watchdog_s: float | None):
    """Every driver gets position limits, a watchdog and an emergency stop in front of it."""
    from hal.safety import SafeDriver, SafetyLimits

    hz = driver.capabilities.control_hz
    watchdog_s = watchdog_s or max(0.25, 3.0 / hz)
    return SafeDriver(
        driver, SafetyLimits.from_spec(driver.capabilities.action), watchdog_s=watchdog_s, name=resource_id
    )


def cmd_edge(args: argparse.Namespace) -> int:
    from edge.agent import EdgeAgent
    from edge.operator import OPERATORS
    from edge.spool import Spool
    from hal.resource import ResourceInfo

    try:
        raw_driver, source, task = build_driver(args.robot, args.seed, args.hz)
        driver = with_safety(raw_driver, args.id, args.watchdog)
    except ValueError as err:
        log.error("%s", err)
        return 2
    operator = None
    if args.operator == "scripted":
        factory = OPERATORS.get(task)
        if factory is None:
            log.error("--operator scripted: no scripted operator for %s; use --operator none", task)
            return 2
        operator = factory()
    resource = ResourceInfo(id=args.id, kind="robot", capabilities=driver.capabilities, source=source)
    spool = Spool(args.spool or Path(".fleetloop") / "spool" / f"{args.id}.db")
    agent = EdgeAgent(
        resource,
        driver,
        spool,
        args.cloud,
        args.policy or driver.capabilities.embodiment,
        operator=operator,
        token=args.token or os.environ.get("FLEETLOOP_TOKEN", ""),
        hold_on_link_loss_s=args.hold_on_link_loss,
    )
    stop = _stop_on_signals()
    threading.Thread(target=lambda: (stop.wait(), agent.stop()), daemon=True).start()
    log.info(
        "%s: %s at %.0f Hz, cloud %s, operator %s",
        args.id,
        args.robot,
        driver.capabilities.control_hz,
        args.cloud,
        args.operator,
    )
    try:
        stats = agent.run(episodes=args.episodes, duration_s=args.duration)
    finally:
        unacked = agent.close()
    log.info(
        "%s stopped: %d episodes, %d successes, %d ticks, %d missed deadlines",
        args.id,
        stats.episodes,
        stats.successes,
        stats.ticks,
        stats.missed_deadlines,
    )
    if args.stats_file:
        Path(args.stats_file).write_text(
            json.dumps(
                {
                    "episodes": stats.episodes,
                    "successes": stats.successes,
                    "ticks": stats.ticks,
                    "missed_deadlines": stats.missed_deadlines,
                    "intervention_steps": stats.intervention_steps,
                    "acked_steps": agent.tunnel.acked_steps,
                    "unacked_steps": unacked,
                }
            )
        )
    return 0


# ---- fleet -----------------------------------------------------------------------------------------


def cmd_fleet(args: argparse.Namespace) -> int:
    import grpc

    from launch.fleet_view import command, show

    if args.action == "show":
        return show(args.cloud, args.watch)
    if not args.resource:
        log.error("fleet %s: name the resource, e.g. fleetloop fleet %s robot-1", args.action, args.action)
        return 2
    try:
        reply = command(args.cloud, args.resource, args.action, args.reason)
    except grpc.RpcError as err:
        log.error("cannot reach the cloud at %s: %s", args.cloud, err.code().name)
        return 1
    (log.info if reply.ok else log.error)("%s", reply.message)
    return 0 if reply.ok else 2


# ---- demo ------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from launch.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(robots=args.robots, minutes=args.minutes, control_hz=args.hz, run_dir=args.run_dir))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetloop", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    cloud = sub.add_parser("cloud", help="run the gateway, the episode store and the learner")
    cloud.add_argument("--root", default="fleetloop-data", help="folder for the store and the registry")
    cloud.add_argument("--host", default="127.0.0.1")
    cloud.add_argument("--port", type=int, default=7070)
    cloud.add_argument("--no-learner", action="store_true", help="run the learner elsewhere")
    cloud.add_argument("--tasks", default=None, help="YAML list of tasks (default: each robot runs its own policy)")
    cloud.add_argument("--lost-after", type=_positive_float, default=5.0, help="seconds of silence before lost")
    cloud.add_argument("--max-batch-mb", type=_positive_float, default=32.0, help="largest step batch accepted")
    add_learner_args(cloud)
    cloud.set_defaults(func=cmd_cloud)

    learner = sub.add_parser("learner", help="run the learner alone against a cloud's data folder")
    learner.add_argument("--root", default="fleetloop-data")
    add_learner_args(learner)
    learner.set_defaults(func=cmd_learner)

    edge = sub.add_parser("edge", help="run an edge agent for one robot")
    edge.add_argument(
        "--robot",
        required=True,
        help="driver and device: sim:panda_pick_cube, sim:pusht, ros2:<robot.yaml> or lerobot:<config.yaml>",
    )
    edge.add_argument("--id", required=True, help="this resource's id, e.g. robot-1")
    edge.add_argument("--cloud", default="127.0.0.1:7070", help="the gateway's host:port")
    edge.add_argument("--policy", default="", help="policy to run (default: the robot's embodiment)")
    edge.add_argument("--operator", default="scripted", choices=["scripted", "none"])
    edge.add_argument("--seed", type=int, default=None)
    edge.add_argument("--hz", type=_positive_float, default=None, help="control rate (default: the driver's)")
    edge.add_argument("--episodes", type=int, default=0, help="stop after this many episodes (0: run on)")
    edge.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run on)")
    edge.add_argument("--spool", default=None, help="spool file (default .fleetloop/spool/<id>.db)")
    edge.add_argument("--token", default=None, help="device token (or FLEETLOOP_TOKEN)")
    edge.add_argument(
        "--watchdog",
        type=_positive_float,
        default=None,
        help="seconds without a fresh action before the robot holds (default max(0.25, 3 ticks))",
    )
    edge.add_argument(
        "--hold-on-link-loss",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="hold still once the cloud is silent this long (default 0: keep working, spooling)",
    )
    edge.add_argument("--stats-file", default=None, help="write the loop's counters here as JSON on exit")
    edge.set_defaults(func=cmd_edge)

    fleet = sub.add_parser("fleet", help="show the live fleet, or pause/resume/drain/stop/estop a resource")
    fleet.add_argument(
        "action", nargs="?", default="show", choices=["show", "pause", "resume", "drain", "stop", "estop", "release"]
    )
    fleet.add_argument("resource", nargs="?", default="", help="resource id for a command")
    fleet.add_argument("--cloud", default="127.0.0.1:7070", help="the gateway's host:port")
    fleet.add_argument("--watch", action="store_true", help="keep the table live (Ctrl-C ends)")
    fleet.add_argument("--reason", default="", help="said in the logs with the command")
    fleet.set_defaults(func=cmd_fleet)

    demo = sub.add_parser("demo", help="the whole loop on this machine: cloud, simulated robots, live table")
    demo.add_argument("--robots", type=_positive_int, default=2)
    demo.add_argument("--minutes", type=_positive_float, default=6.0, help="time limit for the run")
    demo.add_argument("--hz", type=_positive_float, default=10.0)
    demo.add_argument("--run-dir", default=None, help="default runs/<timestamp>")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    setup_logging(args.log_level, plain=args.command in ("cloud", "edge") and not sys.stderr.isatty())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
