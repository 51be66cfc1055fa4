"""``fleetloop edge``: the edge agent for one robot, its driver behind safety limits."""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fleetloop.commands.arg_types import (
    OPERATOR_FORMS,
    add_model_root_arg,
    add_valued,
    cloud_address,
    mebibytes,
    non_negative_float,
    non_negative_int,
    operator_choice,
    positive_float,
    positive_int,
    use_model_roots,
)
from fleetloop.commands.config_flags import EDGE_FLAGS, flag_error
from fleetloop.commands.stopping import exit_after_clean_stop, stop_on_signals
from fleetloop.commands.token_args import add_token_args, read_token
from protocol.video import UPLINK_CODECS

if TYPE_CHECKING:
    from edge.agent import EdgeConfig
    from edge.operator import Operator
    from edge.scene import SceneWait
    from hal.drivers import BuiltDriver
    from hal.resource import Driver
    from hal.safety import SafeDriver

log = logging.getLogger("fleetloop")


def robot_driver(robot: str, seed: int | None, control_hz: float | None) -> BuiltDriver:
    """The driver --robot names; a ValueError that names the flag."""
    from hal.drivers import build_driver

    try:
        return build_driver(robot, seed, control_hz)
    except ValueError as err:
        raise ValueError(f"--robot: {err}") from err


def _check_link_flags(args: argparse.Namespace) -> str | None:
    """Why --cloud and --ca cannot work together, or None."""
    from protocol.channel import is_loopback, target_host

    if not args.ca and not is_loopback(target_host(args.cloud)):
        return f"--cloud {args.cloud} is not on this machine: give --ca <ca.pem> so the link uses TLS"
    if args.ca and not Path(args.ca).is_file():
        return f"--ca: no such file {args.ca}"
    if args.learner_key:
        from policies.signing import Verifier

        try:
            Verifier.from_file(args.learner_key)
        except (OSError, ValueError) as err:
            return f"--learner-key: {err}"
    return None


def _write_stats(path: str, stats, agent, unacked: int) -> None:
    Path(path).write_text(
        json.dumps(
            {
                "episodes": stats.episodes,
                "successes": stats.successes,
                "discarded": stats.discarded,
                "ticks": stats.ticks,
                "missed_deadlines": stats.missed_deadlines,
                "intervention_steps": stats.intervention_steps,
                "acked_steps": agent.tunnel.acked_steps,
                "unacked_steps": unacked,
                "spool_full_ticks": stats.spool_full_ticks,
                # sha256 of every step produced (see edge.recorder.StepDigest), to check the store against
                "digest": agent.recorder.digest.hexdigest(),
                "episode_digests": agent.recorder.digest.per_episode(),
            }
        )
    )


def _preload(libraries: list[str], outcome_from: str) -> None:
    if "lerobot" in libraries:
        from policies.lerobot_policy import preload

        started = time.monotonic()
        preload()
        log.info("imported lerobot's policy code in %.1f s, before the control loop starts", time.monotonic() - started)
    if outcome_from:  # the classifier is lerobot's: importing it while the loop runs would stall the loop
        from policies.reward_classifier import preload as preload_classifier

        started = time.monotonic()
        preload_classifier()
        log.info(
            "imported the reward classifier's code in %.1f s, before the control loop starts",
            time.monotonic() - started,
        )


def _operators(
    args: argparse.Namespace, raw_driver: Driver, task: str
) -> tuple[SafeDriver, Operator | None, Operator | None]:
    """The driver behind its safety layer; who may drive beside the policy: the local operator (--operator) and,
    unless --no-takeover, the people at the robot's takeover page, one at a time (an Arbiter between them); and the
    local operator alone."""
    from edge.arbiter import with_takeover
    from hal.drivers import with_safety

    local = _local_operator(args, raw_driver, task)
    if args.no_takeover:
        return with_safety(raw_driver, args.id, args.watchdog), local, local
    try:
        driver, arbiter = with_takeover(raw_driver, local, args.id, args.watchdog, args.takeover_lease)
    except ValueError as err:
        raise ValueError(f"--takeover-lease: {err}") from err
    return driver, arbiter, local


def _local_operator(args: argparse.Namespace, raw_driver: Driver, task: str) -> Operator | None:
    """The operator at the robot --operator names, a person's devices not yet opened; ValueError naming the flag."""
    from edge.action_map import RobotAction
    from edge.teleop_operator import operator_for
    from hal.resource import ShowsTheScene
    from protocol.arrays import CodecError
    from protocol.steps import check_id

    if args.operator_name:
        try:
            check_id(args.operator_name, "--operator-name")
        except CodecError as err:
            raise ValueError(str(err)) from err
    try:
        scene = raw_driver if isinstance(raw_driver, ShowsTheScene) else None  # a simulator shows its objects
        return operator_for(args.operator, task, RobotAction.of(raw_driver), args.id, args.operator_name, scene)
    except ValueError as err:
        if args.operator == "keyboard" or (args.operator or "").startswith("teleop:"):
            raise ValueError(f"--operator {args.operator}: {err}") from err
        raise


def _person_at_the_robot(args: argparse.Namespace, raw_driver: Driver, local: Operator | None) -> SceneWait | None:
    """The wait between episodes (checked before a device opens), then the person's devices opened (a teleoperator,
    the keys); ValueError, TeleopError or NoKeyboardError saying why not."""
    from edge.scene import scene_wait_for
    from edge.teleop_operator import TeleopOperator
    from hal.resource import SaysSceneReady

    source = raw_driver if isinstance(raw_driver, SaysSceneReady) else None
    scene = scene_wait_for(
        local, source, args.scene_ready_timeout, page=not args.no_takeover, always=args.wait_for_scene
    )
    if isinstance(local, TeleopOperator):
        local.start()
        log.info("%s", local.describe())
    return scene


def _close_person(local: Operator | None) -> None:
    from edge.teleop_operator import TeleopOperator

    if isinstance(local, TeleopOperator):
        local.close()


def cmd_edge(args: argparse.Namespace) -> int:
    from edge.agent import EdgeAgent
    from edge.keys import NoKeyboardError
    from edge.segment_spool import open_spool
    from hal.lerobot_teleop import TeleopError
    from hal.resource import ResourceInfo

    raw_driver: Driver | None = None
    try:
        problem = _check_link_flags(args)
        if problem:
            raise ValueError(problem)
        use_model_roots(args)  # the policies the cloud sends are built here and may name model folders
        raw_driver, source, task = robot_driver(args.robot, args.seed, args.hz)
        driver, operator, local = _operators(args, raw_driver, task)
        config = _edge_config(args, driver.capabilities.embodiment)
        scene = _person_at_the_robot(args, raw_driver, local)
    except (ValueError, TeleopError, NoKeyboardError) as err:
        log.error("%s", err)
        if raw_driver is not None:
            raw_driver.close()  # refused to start: the robot (or simulator) it opened is let go, not left to teardown
        return 2
    _preload(args.preload, args.outcome_from)
    resource = ResourceInfo(id=args.id, kind="robot", capabilities=driver.capabilities, source=source)
    spool = open_spool(args.spool or Path(".fleetloop") / "spool" / f"{args.id}.db")
    agent = EdgeAgent(config, resource, driver, spool, operator=operator, scene=scene)
    stop = stop_on_signals()
    threading.Thread(target=lambda: (stop.wait(), agent.stop()), daemon=True).start()
    hz = driver.capabilities.control_hz
    who = args.operator or ("scripted" if local is not None else "none")
    takeover = "refused (--no-takeover)" if args.no_takeover else "on"
    log.info(
        "%s: %s at %.0f Hz, cloud %s, operator %s, takeover page %s", args.id, args.robot, hz, args.cloud, who, takeover
    )
    try:
        stats = agent.run(episodes=args.episodes, duration_s=args.duration)
    finally:
        unacked = agent.close()
        _close_person(local)
    log.info(
        "%s stopped: %d episodes, %d successes, %d ticks, %d missed deadlines",
        args.id,
        stats.episodes,
        stats.successes,
        stats.ticks,
        stats.missed_deadlines,
    )
    if args.stats_file:
        _write_stats(args.stats_file, stats, agent, unacked)
    exit_after_clean_stop(3 if agent.tunnel.refused is not None else 0)


def _edge_config(args: argparse.Namespace, embodiment: str) -> EdgeConfig:
    """The edge's config of the parsed flags (its policy defaults to the robot's ``embodiment``); ValueError
    naming the flag of a bad field."""
    from edge.agent import EdgeConfig
    from edge.outcome import OutcomeJudgeConfig
    from edge.tunnel_client import TunnelConfig
    from hal.config import ConfigError

    try:
        tunnel = TunnelConfig(
            target=args.cloud,
            policy_name=args.policy or embodiment,
            token=read_token(args),
            ca=args.ca,
            learner_key=args.learner_key,
            remote_inference=args.remote_policy,
            outcome_policy=args.outcome_from,
            uplink_codec=args.uplink_codec,
        )
        outcome = OutcomeJudgeConfig(threshold=args.outcome_threshold, consecutive=args.outcome_ticks)
        return EdgeConfig(
            tunnel,
            outcome=outcome,
            hold_on_link_loss_s=args.hold_on_link_loss,
            max_spool_bytes=mebibytes(args.spool_max_mb),
            episodes_per_version=args.episodes_per_version,
            record_digest=bool(args.stats_file),
        )
    except ConfigError as err:
        raise flag_error(err, EDGE_FLAGS) from err


def _add_link_args(edge: argparse.ArgumentParser) -> None:
    edge.add_argument("--cloud", type=cloud_address, default="127.0.0.1:7070", help="the gateway's host:port")
    edge.add_argument("--policy", default="", help="policy to run (default: the robot's embodiment)")
    edge.add_argument(
        "--operator",
        default=None,
        type=operator_choice,
        metavar="OPERATOR",
        help=f"who may take over from the policy at the robot: {OPERATOR_FORMS} (any lerobot teleoperator by its "
        "config); default: the task's scripted operator where it has one, else none",
    )
    edge.add_argument(
        "--operator-name",
        default="",
        metavar="NAME",
        help="the person at the controls, recorded with every step they drive and every label they give "
        "(default keyboard@<id>, or <teleop type>@<id>)",
    )
    edge.add_argument("--seed", type=int, default=None)
    edge.add_argument("--hz", type=positive_float, default=None, help="control rate (default: the driver's)")
    edge.add_argument("--episodes", type=non_negative_int, default=0, help="stop after this many episodes (0: run on)")
    edge.add_argument(
        "--duration", type=non_negative_float, default=0.0, help="stop after this many seconds (0: run on)"
    )
    edge.add_argument(
        "--spool",
        default=None,
        help="spool (default .fleetloop/spool/<id>.db): its log is the folder <id>.spool beside it; an older edge's"
        " SQLite spool file at that path is moved into it",
    )
    add_token_args(edge, "this device's")
    edge.add_argument("--ca", default=None, help="CA certificate (ca.pem) to reach the cloud over TLS")
    edge.add_argument(
        "--learner-key",
        default=None,
        help="the learner's public key (learner.pub from the cloud's certs/) that every policy version must be signed "
        "with (default: learner.pub beside --ca, else the key the cloud sends)",
    )
    edge.add_argument(
        "--remote-policy", action="store_true", help="run the policy in the cloud (models too big for here)"
    )
    edge.add_argument(
        "--uplink-codec",
        default="auto",
        choices=UPLINK_CODECS,
        help="how camera frames travel up: auto (as the cloud's store keeps each camera: H.264 for RGB cameras of "
        "32 pixels and more, raw otherwise), raw, h264, av1 (must be what the store keeps), or jpeg (each frame on "
        "its own, the lowest latency; the cloud encodes it for the store). Default: auto",
    )


def _add_outcome_args(edge: argparse.ArgumentParser) -> None:
    from edge.outcome import OutcomeJudgeConfig

    defaults = OutcomeJudgeConfig()
    edge.add_argument(
        "--outcome-from",
        default="",
        metavar="NAME",
        help="a reward classifier the learner publishes (e.g. pusht.reward, from `fleetloop learner "
        "--reward-classifier pusht`): it judges each episode's camera frames off the control loop and ends the "
        "episode, labelled success, once it says so (default: none)",
    )
    add_valued(
        edge,
        "--outcome-threshold",
        float,
        defaults.threshold,
        "the classifier's probability of success above which a frame counts as success",
        metavar="P",
    )
    add_valued(
        edge,
        "--outcome-ticks",
        positive_int,
        defaults.consecutive,
        "frames in a row above the threshold before the classifier ends the episode (frames it judged: with a "
        "slow classifier, not every tick's)",
        metavar="N",
    )


def _add_loop_args(edge: argparse.ArgumentParser) -> None:
    add_valued(
        edge,
        "--watchdog",
        positive_float,
        None,
        "seconds without a fresh action before the robot holds (default max(0.25, 3 ticks))",
    )
    edge.add_argument(
        "--preload",
        action="append",
        choices=["lerobot"],
        default=[],
        help="import a policy library before the control loop starts: importing lerobot while the loop runs "
        "stalls it for seconds when the first lerobot policy arrives",
    )
    add_valued(
        edge,
        "--hold-on-link-loss",
        float,
        0.0,
        "hold still once the cloud is silent this long (0: keep working, spooling)",
        metavar="SECONDS",
    )
    add_valued(
        edge,
        "--spool-max-mb",
        float,
        0.0,
        "bound on unacked steps kept on disk; when full the robot holds still until the cloud acks "
        "(unacked steps are never deleted; 0: unbounded)",
        metavar="MB",
    )
    edge.add_argument(
        "--no-takeover",
        action="store_true",
        help="refuse the cloud's takeover page: no person at a browser may drive this robot (no live view either)",
    )
    add_valued(
        edge,
        "--takeover-lease",
        positive_float,
        10.0,
        "a person at the takeover page silent this long loses control and the policy drives again (the robot "
        "holds from the watchdog's deadline on)",
        metavar="SECONDS",
    )
    edge.add_argument(
        "--wait-for-scene",
        action="store_true",
        help="after each episode hold until someone says the scene is reset (the takeover page's scene ready, a "
        "scene_ready_topic, or --scene-ready-timeout), even with no person at the robot: for a real robot driven "
        "only from the page",
    )
    add_valued(
        edge,
        "--scene-ready-timeout",
        non_negative_float,
        0.0,
        "after an episode a robot with a person at it (or a scene_ready_topic) holds until the scene is reset; it "
        "goes on by itself after this long (0: only a person's or the topic's word)",
        metavar="SECONDS",
    )
    add_valued(
        edge,
        "--episodes-per-version",
        non_negative_int,
        0,
        "the synchronous schedule, to compare with the asynchronous loop: after this many episodes with one policy "
        "version the robot holds between episodes until the learner sends a newer one (0: never waits)",
        metavar="N",
    )
    edge.add_argument(
        "--stats-file", default=None, help="write the loop's counters and a sha256 of its steps here as JSON on exit"
    )


def register(sub: argparse._SubParsersAction) -> None:
    edge = sub.add_parser("edge", help="run an edge agent for one robot")
    edge.add_argument(
        "--robot",
        required=True,
        help="driver and device: sim:panda_pick_cube, sim:pusht, ros2:<robot.yaml> or lerobot:<config.yaml>",
    )
    edge.add_argument("--id", required=True, help="this resource's id, e.g. robot-1")
    _add_link_args(edge)
    add_model_root_arg(edge)
    _add_loop_args(edge)
    _add_outcome_args(edge)
    edge.set_defaults(func=cmd_edge)
