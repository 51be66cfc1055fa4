"""The ``fleetloop`` command: cloud, edge, learner and demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from fleetloop.logs import setup_logging

# Robot configs and the Fast DDS profile live beside the packages, in the checkout's launch/ folder.
LAUNCH_DIR = Path(__file__).resolve().parents[1] / "launch"

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


def _cloud_security(args: argparse.Namespace):
    """(devices, tls_cert, tls_key) for `fleetloop cloud`; ValueError names the flag when it is unsafe or broken."""
    from cloud.security.certs import CertPaths
    from cloud.security.devices import DeviceRegistry
    from protocol.channel import is_loopback

    root = Path(args.root)
    devices = DeviceRegistry(root / "devices.json")
    cert = key = None
    if args.tls:
        paths = CertPaths(Path(args.certs) if args.certs else root / "certs")
        if not paths.exist():
            raise ValueError(f"--tls: no certificates in {paths.directory}; run `fleetloop certs init --root {root}`")
        cert, key = paths.server_cert.read_bytes(), paths.server_key.read_bytes()
    if not is_loopback(args.host):
        if not args.tls:
            raise ValueError(
                f"--host {args.host}: beyond loopback the cloud speaks TLS only; run `fleetloop certs init` "
                "and start it with --tls"
            )
        if not any(not d.revoked for d in devices.devices()):
            raise ValueError(
                f"--host {args.host}: beyond loopback every device needs a credential and {devices.path} has none; "
                "add devices with `fleetloop devices add <id>`"
            )
    return devices, cert, key


# ---- cloud -----------------------------------------------------------------------------------------


def _sample_ratios(text: str) -> tuple[str, tuple]:
    """``[DATASET:]GROUP=RATIO,...`` -> (dataset or "", ratios); the sampler names what is wrong."""
    from cloud.learning.sampler import parse_ratios

    dataset, sep, spec = text.rpartition(":")
    try:
        return (dataset if sep else "", parse_ratios(spec))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _chunk_size(text: str) -> tuple[str, int]:
    """``DATASET=N`` -> (dataset, N)."""
    dataset, sep, size = text.partition("=")
    if not sep or not dataset.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not DATASET=N (e.g. phone=10)")
    try:
        value = int(size)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{dataset}: chunk size must be an integer, got {size!r}") from err
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{dataset}: chunk size must be in 1..1000, got {value}")
    return dataset.strip(), value


def _dataset_value(text: str, what: str) -> tuple[str, str]:
    dataset, sep, value = text.partition("=")
    if not sep or not dataset.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not DATASET={what}")
    return dataset.strip(), value.strip()


def _policy_type(text: str) -> tuple[str, str]:
    return _dataset_value(text, "TYPE (mlp, cnn, act, diffusion, smolvla...)")


def _policy_config(text: str) -> tuple[str, dict]:
    """``DATASET=FILE.json`` -> (dataset, the file's fields); the file must hold a JSON object."""
    dataset, path = _dataset_value(text, "FILE.json")
    try:
        fields = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise argparse.ArgumentTypeError(f"{dataset}: cannot read the policy config {path}: {err}") from err
    if not isinstance(fields, dict):
        raise argparse.ArgumentTypeError(f"{dataset}: {path} must hold a JSON object of config fields")
    return dataset, fields


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
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="steps per gradient step (default 256)")
    parser.add_argument(
        "--chunk-size",
        type=_chunk_size,
        action="append",
        default=[],
        metavar="DATASET=N",
        help="hg-dagger: that dataset's policy predicts N actions at once (default phone=10: the foresight "
        "trajectory); repeatable",
    )
    parser.add_argument(
        "--policy",
        type=_policy_type,
        action="append",
        default=[],
        metavar="DATASET=TYPE",
        help="the policy trained for a dataset: mlp, cnn or a lerobot type (act, diffusion, smolvla...); "
        "default mlp, or cnn with images; repeatable",
    )
    parser.add_argument(
        "--policy-config",
        type=_policy_config,
        action="append",
        default=[],
        metavar="DATASET=FILE.json",
        help="that policy's config fields (for lerobot: its PreTrainedConfig fields, e.g. chunk_size); repeatable",
    )
    parser.add_argument(
        "--foresight-tolerance-m",
        type=_positive_float,
        default=0.02,
        help="phone demonstrations where the foresight was off by more than this (metres) are sampled more often",
    )
    parser.add_argument(
        "--foresight-max-weight",
        type=float,
        default=5.0,
        help="at most this many times as often (1: sample phone demonstrations evenly; default 5)",
    )
    parser.add_argument(
        "--algorithm",
        choices=["hg-dagger", "sac"],
        default="hg-dagger",
        help="hg-dagger: imitate the operator's corrections; sac: RL with interventions (HIL-SERL style)",
    )
    parser.add_argument(
        "--staleness-budget",
        type=int,
        default=None,
        metavar="N",
        help="versions an on-policy step may lag the learner (drop: kept while age <= N; downweight: half-life N)",
    )
    parser.add_argument("--staleness-mode", choices=["drop", "downweight"], default="drop")
    parser.add_argument(
        "--staleness-decay", choices=["exp", "linear"], default="exp", help="how downweight decays (default exp)"
    )
    parser.add_argument(
        "--staleness-interventions",
        action="store_true",
        help="let interventions age too (by default steps a person labelled are exempt)",
    )
    parser.add_argument(
        "--sample-ratios",
        type=_sample_ratios,
        action="append",
        default=[],
        metavar="[DATASET:]GROUP=RATIO,...",
        help="shares of each batch by kind of step (online, intervention, demo, offline; join kinds with +), "
        "e.g. online=0.5,intervention+demo=0.5; prefix DATASET: for one task; repeatable",
    )
    parser.add_argument(
        "--offline-source",
        action="append",
        default=[],
        metavar="SOURCE",
        help="episodes from this source are imported offline data (repeatable)",
    )
    parser.add_argument(
        "--demo-ratio",
        type=float,
        default=0.5,
        help="sac: share of each batch from the demonstration buffer (interventions, demos; default 0.5)",
    )
    parser.add_argument(
        "--sac-explore",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sac: robots sample actions from the published actor, as HIL-SERL collects (default); "
        "--no-sac-explore runs its mean action",
    )
    parser.add_argument("--learner-seed", type=int, default=0, help="seed of the learner's batches (rank adds to it)")


def _policies(types: list[tuple[str, str]], configs: list[tuple[str, dict]]) -> dict[str, tuple[str, dict]]:
    """--policy and --policy-config -> {dataset: (type, fields)}; a config for a dataset without --policy is an
    error (its type would be a guess)."""
    chosen = dict(types)
    fields = dict(configs)
    for dataset in fields:
        if dataset not in chosen:
            raise ValueError(f"--policy-config {dataset}=...: name its policy type too (--policy {dataset}=TYPE)")
    return {dataset: (policy_type, fields.get(dataset, {})) for dataset, policy_type in chosen.items()}


def learner_config(args: argparse.Namespace):
    """The LearnerConfig of the parsed flags; ValueError naming the flag when flags do not fit together."""
    from cloud.learning.algorithms.sac_agent import SACConfig
    from cloud.learning.config import LearnerConfig
    from cloud.learning.sampler import SamplerConfig

    default_ratios = None
    per_dataset: dict[str, tuple] = {}
    for dataset, ratios in getattr(args, "sample_ratios", []):
        if not dataset:
            default_ratios = ratios
        else:
            per_dataset[dataset] = ratios
    try:
        return LearnerConfig(
            first_round_episodes=args.first_round_episodes,
            round_episodes=args.round_episodes,
            train_steps=args.train_steps,
            batch_size=getattr(args, "batch_size", 256),
            chunk_sizes=(("phone", 10), *getattr(args, "chunk_size", [])),
            policies=_policies(getattr(args, "policy", []), getattr(args, "policy_config", [])),
            algorithm=getattr(args, "algorithm", "hg-dagger"),
            staleness_budget=getattr(args, "staleness_budget", None),
            staleness_mode=getattr(args, "staleness_mode", "drop"),
            staleness_decay=getattr(args, "staleness_decay", "exp"),
            staleness_interventions=getattr(args, "staleness_interventions", False),
            sampler=SamplerConfig(
                ratios=default_ratios,
                per_dataset=per_dataset,
                offline_sources=tuple(getattr(args, "offline_source", [])),
                foresight_tolerance_m=getattr(args, "foresight_tolerance_m", 0.02),
                foresight_max_weight=getattr(args, "foresight_max_weight", 5.0),
            ),
            sac=SACConfig(demo_ratio=getattr(args, "demo_ratio", 0.5), explore=getattr(args, "sac_explore", True)),
            seed=getattr(args, "learner_seed", 0),
        )
    except ValueError as err:
        message = str(err)
        if message.startswith("learner.policies"):
            raise ValueError(f"--policy: {message}") from err
        fields = ("staleness_budget", "staleness_mode", "staleness_decay", "demo_ratio", "sampler.ratios")
        for field in (*fields, "foresight_max_weight", "foresight_tolerance_m"):
            key = field.split(".")[-1]
            if field in message or f"sac.{key}" in message:
                flag = {"ratios": "sample-ratios"}.get(key, key.replace("_", "-"))
                raise ValueError(f"--{flag}: {message}") from err
        raise


def run_learner(
    root: str,
    config,
    stop: threading.Event | None = None,
    log_plain: bool = True,
    dist=None,
    on_step=None,
    max_rounds: int = 0,
) -> None:
    """The learner over ``root`` until ``stop`` (or signals); ``dist``: torchrun's context."""
    setup_logging(plain=log_plain)
    import torch

    from cloud.data.store import EpisodeStore
    from cloud.data.version_registry import PolicyRegistry
    from cloud.learning.learner import Learner

    torch.set_num_threads(1)  # two cores are shared with the gateway and the robots
    stop = stop or _stop_on_signals()
    store = EpisodeStore(Path(root) / "store", read_only=True)
    registry = PolicyRegistry(Path(root) / "registry")
    checkpoint_dir = Path(root) / "learner" / "checkpoint"
    learner = Learner(store, registry, config, checkpoint_dir=checkpoint_dir, dist=dist, on_step=on_step)
    learner.run(stop, max_rounds=max_rounds)


def _learner_process(root: str, config) -> None:
    run_learner(root, config)


def load_tasks(path: str):
    """Tasks from YAML: a list of {name, policy, instruction, count, requires: {kind, embodiment, ...}}.

    Every entry is checked; a ValueError names the offending key (``tasks[1].requires.min_control_hz: ...``).
    """
    import math

    import yaml

    from cloud.gateway.fleet import Requirements, Task
    from hal.resource import RESOURCE_KINDS
    from protocol.arrays import CodecError
    from protocol.limits import check_policy_name
    from protocol.steps import check_id

    try:
        entries = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of tasks")

    def text(value, key: str, required: bool = False) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        try:
            check_id(value, key, required=required)
        except CodecError as err:
            raise ValueError(str(err)) from err
        return value

    def texts(value, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list of names, got {value!r}")
        return tuple(text(v, f"{key}[{j}]", required=True) for j, v in enumerate(value))

    tasks = []
    for i, entry in enumerate(entries):
        key = f"tasks[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{key}: expected a mapping")
        unknown = set(entry) - {"name", "policy", "instruction", "count", "requires"}
        if unknown:
            raise ValueError(f"{key}.{sorted(map(str, unknown))[0]}: unknown key")
        requires = entry.get("requires") or {}
        if not isinstance(requires, dict):
            raise ValueError(f"{key}.requires: expected a mapping, got {requires!r}")
        unknown = set(requires) - {"kind", "embodiment", "observations", "cameras", "min_control_hz"}
        if unknown:
            raise ValueError(f"{key}.requires.{sorted(map(str, unknown))[0]}: unknown key")
        policy = entry.get("policy")
        if not isinstance(policy, str):
            raise ValueError(f"{key}.policy: expected a policy name, got {policy!r}")
        try:
            check_policy_name(policy, f"{key}.policy")
        except CodecError as err:
            raise ValueError(str(err)) from err
        count = entry.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{key}.count: expected an integer >= 0 (0: every matching resource), got {count!r}")
        hz = requires.get("min_control_hz", 0.0)
        if isinstance(hz, bool) or not isinstance(hz, int | float) or not math.isfinite(hz) or hz < 0:
            raise ValueError(f"{key}.requires.min_control_hz: expected a number >= 0, got {hz!r}")
        kind = text(requires.get("kind", ""), f"{key}.requires.kind")
        if kind not in ("", *RESOURCE_KINDS):
            raise ValueError(f"{key}.requires.kind: must be one of {RESOURCE_KINDS}, got {kind!r}")
        tasks.append(
            Task(
                name=text(entry.get("name", policy), f"{key}.name", required=True),
                policy_name=policy,
                instruction=str(text(entry.get("instruction", ""), f"{key}.instruction")),
                count=count,
                requires=Requirements(
                    kind=kind,
                    embodiment=text(requires.get("embodiment", ""), f"{key}.requires.embodiment"),
                    observations=texts(requires.get("observations", []), f"{key}.requires.observations"),
                    cameras=texts(requires.get("cameras", []), f"{key}.requires.cameras"),
                    min_control_hz=float(hz),
                ),
            )
        )
    names = [t.name for t in tasks]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"tasks[{i}].name: duplicate task name {name!r}")
    return tuple(tasks)


def cmd_cloud(args: argparse.Namespace) -> int:
    try:
        devices, tls_cert, tls_key = _cloud_security(args)
    except ValueError as err:
        log.error("refusing to start: %s", err)
        return 2
    from cloud.data.store import EpisodeStore
    from cloud.data.version_registry import PolicyRegistry
    from cloud.gateway.server import GatewayConfig, serve

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
        devices=devices,
        wire_dtype=args.wire_dtype,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        services = _phone_service(args, root) + _openpi_service(args, devices, tls_cert, tls_key)
        await serve(config, store, registry, stop, services=services)

    log.info("cloud data in %s (episode store %s, registry %s)", root, root / "store", root / "registry")
    try:
        asyncio.run(main())
    finally:
        if learner is not None:
            learner.terminate()
            learner.join(timeout=5)
    log.info("cloud stopped")
    return 0


WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def lan_address() -> str:
    """This machine's address on its default route ("" without one). A UDP connect sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
            return probe.getsockname()[0]
        except OSError:
            return ""


def phone_url_host(given: str, listen_host: str, server_cert: Path | None, lan: str = "") -> str:
    """The host a phone dials, named in the pairing URL: ``given`` (--phone-url-host), else the listening host,
    else (listening on every interface) this machine's LAN address ``lan`` when the certificate names it, else
    the certificate's first name beyond loopback, else ``lan`` or this machine's name. A phone checks the
    certificate against that host: warn when the certificate does not name it."""
    from cloud.security.certs import DEFAULT_HOSTS, server_hosts

    names = server_hosts(server_cert) if server_cert is not None else []
    host = given or (listen_host if listen_host not in WILDCARD_HOSTS else "")
    if not host:
        beyond = [n for n in names if n not in DEFAULT_HOSTS]
        host = (lan if lan in beyond else "") or (beyond[0] if beyond else "") or lan or socket.gethostname()
        log.info("phones reach this cloud at %s (set --phone-url-host to name another address)", host)
    if names and host not in names:
        log.warning(
            "the pairing URL names %s, which the server certificate does not (it names %s): phones will refuse "
            "it; run `fleetloop certs init --host %s --force`",
            host,
            ", ".join(names),
            host,
        )
    return host


def phone_certs(args: argparse.Namespace, root: Path, lan: str):
    """The certificates the phone page is served with: those of `fleetloop certs init` when present, else made
    now (first start), naming loopback, the listening host, --phone-url-host, this machine's LAN address and
    name. Browsers give the camera and WebXR only to secure pages, and a phone is never on loopback."""
    from cloud.security.certs import CertPaths, init_certs

    certs = CertPaths(Path(args.certs) if args.certs else root / "certs")
    if not certs.exist():
        hosts = [args.phone_url_host, args.host, lan, socket.gethostname()]
        hosts = list(dict.fromkeys(h for h in hosts if h and h not in WILDCARD_HOSTS))
        init_certs(certs.directory, hosts=tuple(hosts))
        log.info(
            "made a CA and a server certificate for the phone page in %s (for %s); a phone installs %s once",
            certs.directory,
            ", ".join(hosts),
            certs.ca,
        )
    return certs


def _phone_service(args: argparse.Namespace, root: Path) -> tuple:
    """The phone channel beside the gateway when --phone-port is given: the page over HTTPS, phones over wss."""
    if args.phone_port is None:
        return ()
    from cloud.channels.phone_channel import PhoneChannel, PhoneChannelConfig

    lan = lan_address()
    certs = phone_certs(args, root, lan)
    height, width = args.phone_image
    config = PhoneChannelConfig(
        host=args.host,
        port=args.phone_port,
        image_height=height,
        image_width=width,
        credentials=root / "phone-devices.json",
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_ca=certs.ca,
        public_host=phone_url_host(args.phone_url_host, args.host, certs.server_cert, lan),
    )
    return (lambda gateway: PhoneChannel(config, gateway),)


def _openpi_service(args: argparse.Namespace, devices, tls_cert: bytes | None, tls_key: bytes | None) -> tuple:
    """openpi's websocket policy-server protocol beside the gateway when --openpi-port is given (docs/openpi.md);
    it shares the gateway's batched remote inference, device credentials (Api-Key) and TLS."""
    if args.openpi_port is None:
        return ()
    from cloud.channels.openpi_server import OpenPiServer, ssl_context

    context = ssl_context(tls_cert, tls_key) if tls_cert and tls_key else None
    return (
        lambda gateway: OpenPiServer(
            gateway.inference,
            gateway.registry,
            host=args.host,
            port=args.openpi_port,
            default_policy=args.openpi_policy,
            devices=devices,
            ssl_context=context,
        ),
    )


def _image_size(text: str) -> tuple[int, int]:
    height, sep, width = text.partition("x")
    if not (sep and height.isdigit() and width.isdigit() and 8 <= int(height) <= 2048 and 8 <= int(width) <= 2048):
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH, each 8..2048, got {text!r}")
    return int(height), int(width)


def cmd_learner(args: argparse.Namespace) -> int:
    try:
        config = learner_config(args)
    except ValueError as err:
        log.error("refusing to start: %s", err)
        return 2
    run_learner(args.root, config, log_plain=False)
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
        except yaml.YAMLError as err:
            raise ValueError(f"--robot: {name} is not valid YAML: {err}") from err
        if not isinstance(config, dict):
            raise ValueError(f"--robot: {name} must hold a mapping with at least 'type'")
        if control_hz:
            config.setdefault("control_hz", control_hz)
        return make_lerobot_robot(config), "robot", str(config.get("type", ""))
    if kind == "ros2":
        # Fast DDS reads its profile once, at the first rclpy.init: the shipped one gives images a 16 MB
        # shared-memory segment (about 3 ms for 640x480 instead of about 14 ms).
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(LAUNCH_DIR / "ros2" / "fastdds_shm.xml"))
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
    from protocol.channel import is_loopback, target_host

    if not args.ca and not is_loopback(target_host(args.cloud)):
        log.error("--cloud %s is not on this machine: give --ca <ca.pem> so the link uses TLS", args.cloud)
        return 2
    if args.ca and not Path(args.ca).is_file():
        log.error("--ca: no such file %s", args.ca)
        return 2
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
    if "lerobot" in args.preload:
        from policies.lerobot_policy import preload

        started = time.monotonic()
        preload()
        log.info("imported lerobot's policy code in %.1f s, before the control loop starts", time.monotonic() - started)
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
        max_spool_bytes=int(args.spool_max_mb * (1 << 20)),
        record_digest=bool(args.stats_file),
        ca=args.ca,
        remote_inference=args.remote_policy,
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
                    "spool_full_ticks": stats.spool_full_ticks,
                    # sha256 of every step produced (see edge.recorder.StepDigest), to check the store against
                    "digest": agent.recorder.digest.hexdigest(),
                    "episode_digests": agent.recorder.digest.per_episode(),
                }
            )
        )
    return 3 if agent.tunnel.refused is not None else 0


# ---- fleet -----------------------------------------------------------------------------------------


def cmd_fleet(args: argparse.Namespace) -> int:
    import grpc

    from fleetloop.fleet_view import command, show

    access = {"ca": args.ca, "token": args.token or os.environ.get("FLEETLOOP_TOKEN", "")}
    try:
        if args.action == "show":
            return show(args.cloud, args.watch, **access)
        if not args.resource:
            log.error("fleet %s: name the resource, e.g. fleetloop fleet %s robot-1", args.action, args.action)
            return 2
        reply = command(args.cloud, args.resource, args.action, args.reason, **access)
    except ValueError as err:
        log.error("%s", err)
        return 2
    except grpc.RpcError as err:
        log.error("cannot reach the cloud at %s: %s (%s)", args.cloud, err.code().name, err.details())
        return 1
    (log.info if reply.ok else log.error)("%s", reply.message)
    return 0 if reply.ok else 2


# ---- policies --------------------------------------------------------------------------------------


def cmd_policy(args: argparse.Namespace) -> int:
    from cloud.data.version_registry import PolicyRegistry

    registry = PolicyRegistry(Path(args.root) / "registry")
    try:
        if args.action == "rollback":
            version = registry.rollback(args.name, args.to)
            log.info(
                "%s v%d published with the weights of %s; edges take it as their next update",
                args.name,
                version.version,
                version.note.removeprefix("rollback to "),
            )
            return 0
        latest = registry.latest(args.name)
        if latest is None:
            raise ValueError(f"policy_name: no versions of {args.name!r}")
        for number in registry.versions(args.name):
            marker = " (latest)" if number == latest.version else ""
            note = latest.note if number == latest.version else ""
            print(f"v{number}{marker}{': ' + note if note else ''}")
    except ValueError as err:
        log.error("policy %s: %s", args.action, err)
        return 2
    return 0


# ---- devices and certificates ------------------------------------------------------------------------


def cmd_devices(args: argparse.Namespace) -> int:
    from cloud.security.devices import DeviceRegistry

    registry = DeviceRegistry(Path(args.root) / "devices.json")
    try:
        if args.action == "add":
            if not args.id:
                raise ValueError("id: name the device, e.g. fleetloop devices add robot-1")
            token = registry.add(args.id, args.kind, tuple(args.policy))
            # The token goes to stdout only, once: logs never carry it.
            print(token)
            log.info(
                "added %s %s; its token was printed once (keep it on the device, e.g. FLEETLOOP_TOKEN)",
                args.kind,
                args.id,
            )
        elif args.action == "revoke":
            if not args.id:
                raise ValueError("id: name the device to revoke")
            registry.revoke(args.id)
            log.info("revoked %s: the cloud refuses it from its next call on", args.id)
        else:
            from rich.console import Console
            from rich.table import Table

            table = Table(title=f"devices in {registry.path}")
            for column in ("id", "kind", "policies", "state", "added"):
                table.add_column(column)
            for device in registry.devices():
                table.add_row(
                    device.id,
                    device.kind,
                    ", ".join(device.policies) or "any",
                    "revoked" if device.revoked else "active",
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(device.added_unix)),
                )
            Console().print(table)
    except ValueError as err:
        log.error("devices %s: %s", args.action, err)
        return 2
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from cloud.security.certs import init_certs, server_hosts

    directory = Path(args.certs) if args.certs else Path(args.root) / "certs"
    try:
        paths = init_certs(directory, tuple(args.host), force=args.force)
    except (FileExistsError, ValueError) as err:
        log.error("certs init: %s", err)
        return 2
    log.info(
        "created a CA (%s) and the cloud's certificate for %s; copy %s to every robot and pass it as --ca",
        paths.ca,
        ", ".join(server_hosts(paths.server_cert)),
        paths.ca.name,
    )
    return 0


# ---- LeRobotDataset export and import ------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # writes a local dataset; nothing to fetch
    from cloud.data.lerobot_export import Selection, export_lerobot
    from cloud.data.store import EpisodeStore

    if not (Path(args.root) / "zarr.json").is_file():
        log.error("export: --root: no episode store at %s", args.root)
        return 2
    store = EpisodeStore(args.root, read_only=True)  # read_only: works while the cloud writes
    selection = Selection(
        episode_ids=tuple(args.episodes),
        resource_ids=tuple(args.resource),
        sources=tuple(args.source),
        unfinished=args.include_unfinished,
    )
    try:
        report = export_lerobot(
            store, args.dataset, args.out, repo_id=args.repo_id, fps=args.fps, selection=selection, video=args.video
        )
    except ValueError as err:
        log.error("export: %s", err)
        return 2
    finally:
        store.close()
    log.info(
        "exported %d episodes (%d frames, %d fps from %s) of %s to %s as LeRobotDataset %s",
        report.episodes,
        report.frames,
        report.fps,
        "--fps" if report.fps_from == "flag" else "the step timestamps",
        report.dataset,
        report.out,
        report.repo_id,
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # reads a local dataset; nothing to fetch
    from cloud.data.lerobot_import import import_lerobot
    from cloud.data.store import EpisodeStore

    try:
        store = EpisodeStore(args.root)
    except RuntimeError as err:  # the one-writer lock: the cloud holds it
        log.error("import: --root: %s; stop the cloud first or import into another root", err)
        return 2
    try:
        report = import_lerobot(
            store, args.from_dir, repo_id=args.repo_id, dataset=args.dataset, resource_id=args.resource
        )
    except ValueError as err:
        log.error("import: %s", err)
        return 2
    finally:
        store.close()
    log.info(
        "imported %d episodes (%d steps) of %s into %s as demonstrations from %s; %d were there already%s",
        report.imported,
        report.steps,
        report.repo_id,
        report.dataset,
        report.resource_id,
        report.skipped,
        f" (features not taken over: {', '.join(report.ignored)})" if report.ignored else "",
    )
    return 0


def _positive_fps(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be a whole number of frames per second in 1-1000, got {value}")
    return value


def add_interop_commands(sub) -> None:
    export = sub.add_parser("export", help="write store episodes as a LeRobotDataset v3 (lerobot's own writer)")
    export.add_argument("--root", default="fleetloop-data", help="the cloud's data folder (holds the store)")
    export.add_argument("--dataset", required=True, help="the store dataset (embodiment), e.g. panda_pick_cube")
    export.add_argument("--out", required=True, help="a new directory for the LeRobotDataset")
    export.add_argument("--repo-id", default=None, help="the dataset's repo id (default fleetloop/<dataset>)")
    export.add_argument("--episodes", nargs="+", action="extend", default=[], help="only these episode ids")
    export.add_argument("--resource", nargs="+", action="extend", default=[], help="only these resources' episodes")
    export.add_argument("--source", nargs="+", action="extend", default=[], help="only these sources (sim, robot...)")
    export.add_argument("--include-unfinished", action="store_true", help="also episodes that have not ended")
    export.add_argument("--fps", type=_positive_fps, default=None, help="default: from the steps' timestamps")
    export.add_argument("--video", action="store_true", help="encode images as AV1 video (lossy) instead of PNG")
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="bring a local LeRobotDataset into the store as offline demonstrations")
    imp.add_argument("--root", default="fleetloop-data", help="the cloud's data folder (holds the store)")
    imp.add_argument("--from", dest="from_dir", required=True, help="the LeRobotDataset's directory")
    imp.add_argument("--repo-id", default=None, help="its repo id (default: from its export, else local/<dir>)")
    imp.add_argument("--dataset", default=None, help="the store dataset (default: its robot type or name)")
    imp.add_argument("--resource", default=None, help="resource id of the steps (default import:<repo id>)")
    imp.set_defaults(func=cmd_import)


# ---- demo ------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from fleetloop.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(robots=args.robots, minutes=args.minutes, control_hz=args.hz, run_dir=args.run_dir))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetloop",
        description="A fleet of robots that learns while it works: run the cloud (gateway, store, learner), an edge "
        "agent per robot, and watch or steer the fleet. Start with 'fleetloop demo'.",
    )
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
    cloud.add_argument(
        "--wire-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="float weights on the wire (bfloat16 halves policy updates)",
    )
    cloud.add_argument("--tls", action="store_true", help="serve TLS with the certificates of `fleetloop certs init`")
    cloud.add_argument("--certs", default=None, help="certificate folder (default <root>/certs)")
    cloud.add_argument(
        "--phone-port", type=int, default=None, help="serve the phone channel (websockets) on this port; 0: any"
    )
    cloud.add_argument(
        "--phone-image", type=_image_size, default=(224, 224), help="phone frames are stored at HEIGHTxWIDTH"
    )
    cloud.add_argument(
        "--phone-url-host",
        default="",
        help="the address phones dial, in the pairing URL (default --host; with 0.0.0.0 the certificate's name)",
    )
    cloud.add_argument(
        "--openpi-port", type=int, default=None, help="serve openpi clients (websocket policy server) here; 0: any"
    )
    cloud.add_argument("--openpi-policy", default="", help="policy an openpi client drives unless its URL names one")
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
    edge.add_argument("--ca", default=None, help="CA certificate (ca.pem) to reach the cloud over TLS")
    edge.add_argument(
        "--remote-policy",
        action="store_true",
        help="run the policy in the cloud (for models too large for this machine): observations up, action chunks down",
    )
    edge.add_argument(
        "--watchdog",
        type=_positive_float,
        default=None,
        help="seconds without a fresh action before the robot holds (default max(0.25, 3 ticks))",
    )
    edge.add_argument(
        "--preload",
        action="append",
        choices=["lerobot"],
        default=[],
        help="import a policy library before the control loop starts: importing lerobot while the loop runs "
        "stalls it for seconds when the first lerobot policy arrives",
    )
    edge.add_argument(
        "--hold-on-link-loss",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="hold still once the cloud is silent this long (default 0: keep working, spooling)",
    )
    edge.add_argument(
        "--spool-max-mb",
        type=_non_negative_float,
        default=0.0,
        metavar="MB",
        help="bound on unacked steps kept on disk; when full the robot holds still until the cloud acks "
        "(unacked steps are never deleted; default 0: unbounded)",
    )
    edge.add_argument(
        "--stats-file", default=None, help="write the loop's counters and a sha256 of its steps here as JSON on exit"
    )
    edge.set_defaults(func=cmd_edge)

    fleet = sub.add_parser("fleet", help="show the live fleet, or pause/resume/drain/stop/estop a resource")
    fleet.add_argument(
        "action", nargs="?", default="show", choices=["show", "pause", "resume", "drain", "stop", "estop", "release"]
    )
    fleet.add_argument("resource", nargs="?", default="", help="resource id for a command")
    fleet.add_argument("--cloud", default="127.0.0.1:7070", help="the gateway's host:port")
    fleet.add_argument("--watch", action="store_true", help="keep the table live (Ctrl-C ends)")
    fleet.add_argument("--reason", default="", help="said in the logs with the command")
    fleet.add_argument("--ca", default=None, help="CA certificate (ca.pem) to reach the cloud over TLS")
    fleet.add_argument("--token", default=None, help="an operator device's token (or FLEETLOOP_TOKEN)")
    fleet.set_defaults(func=cmd_fleet)

    policy = sub.add_parser("policy", help="list a policy's versions, or roll back to an earlier one")
    policy.add_argument("action", choices=["list", "rollback"])
    policy.add_argument("name", help="the policy, e.g. panda_pick_cube")
    policy.add_argument("--root", default="fleetloop-data", help="the cloud's data folder")
    policy.add_argument("--to", type=_positive_int, default=None, help="version to go back to (default: previous)")
    policy.set_defaults(func=cmd_policy)

    devices = sub.add_parser("devices", help="issue, list and revoke per-device credentials")
    devices.add_argument("action", choices=["add", "list", "revoke"])
    devices.add_argument("id", nargs="?", default="", help="device id (the robot's --id)")
    devices.add_argument("--root", default="fleetloop-data", help="the cloud's data folder")
    devices.add_argument("--kind", default="robot", choices=["robot", "phone", "operator"])
    devices.add_argument(
        "--policy", action="append", default=[], help="a policy the device may run (repeat; default any)"
    )
    devices.set_defaults(func=cmd_devices)

    certs = sub.add_parser("certs", help="create the CA and the cloud's TLS certificate")
    certs.add_argument("action", choices=["init"])
    certs.add_argument("--root", default="fleetloop-data", help="the cloud's data folder")
    certs.add_argument("--certs", default=None, help="where to write them (default <root>/certs)")
    certs.add_argument(
        "--host", action="append", default=[], help="a name or address edges use to reach the cloud (repeat)"
    )
    certs.add_argument("--force", action="store_true", help="replace existing certificates")
    certs.set_defaults(func=cmd_certs)

    add_interop_commands(sub)

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
