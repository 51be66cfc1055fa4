"""``fleetloop cloud``: the gateway, the episode store, the learner and, on request, the phone and openpi
channels."""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.process
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.gateway.tasks import load_tasks
from fleetloop.commands.arg_types import add_root_arg, mebibytes, port, use_model_roots
from fleetloop.commands.config_flags import CLOUD_FLAGS, flag_error
from fleetloop.commands.learner import add_learner_args, learner_config, learner_process
from hal.config import ConfigError

if TYPE_CHECKING:
    from cloud.gateway.config import GatewayConfig
    from cloud.gateway.server import ServiceFactory

log = logging.getLogger("fleetloop")
LEARNER_STOP_S = 5.0  # after a stop, how long the learner may finish its round before it is ended


def _cloud_security(args: argparse.Namespace):
    """(devices, tls_cert, tls_key) for `fleetloop cloud`; ValueError names the flag when it is unsafe or broken."""
    from cloud.security.certs import CertPaths
    from cloud.security.devices import DeviceRegistry
    from cloud.security.exposure import exposure_problem, tls_pair

    layout = args.root
    devices = DeviceRegistry(layout.devices)
    cert = key = None
    if args.tls:
        certs = CertPaths(_certs_dir(args))
        try:
            cert, key = tls_pair(certs)
        except ValueError as err:
            hint = "" if certs.exist() else f"; run `fleetloop certs init --root {layout.root}`"
            raise ValueError(f"--tls: {err}{hint}") from err
    problem = exposure_problem(args.host, args.tls, devices)
    if problem:
        raise ValueError(f"--host {args.host}: {problem}")
    return devices, cert, key


def _certs_dir(args: argparse.Namespace) -> Path:
    return Path(args.certs) if args.certs else args.root.certs


def _phone_service(args: argparse.Namespace) -> tuple[ServiceFactory, ...]:
    """The phone channel beside the gateway when --phone-port is given: the phone page, the robots' takeover pages and
    the fleet dashboard over HTTPS, their websockets over wss."""
    from cloud.channels.dashboard_channel import DashboardPages
    from cloud.channels.phone_channel import PhoneChannel, PhoneChannelConfig
    from cloud.channels.takeover_channel import TakeoverPages
    from cloud.data.store_union import StoreUnion

    height, width = args.phone_image
    pairing_ttl_s = args.pairing_minutes * 60
    if args.phone_port is None:  # every flag is checked, even one left unused
        PhoneChannelConfig(image_height=height, image_width=width, pairing_ttl_s=pairing_ttl_s)
        return ()
    from cloud.channels.phone_address import lan_address, phone_certs, phone_url_host
    from cloud.security.certs import CertPaths

    lan = lan_address()
    certs = phone_certs(CertPaths(_certs_dir(args)), args.host, args.phone_url_host, lan)
    config = PhoneChannelConfig(
        host=args.host,
        port=args.phone_port,
        image_height=height,
        image_width=width,
        credentials=args.root.phone_devices,
        pairing_ttl_s=pairing_ttl_s,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_ca=certs.ca,
        public_host=phone_url_host(args.phone_url_host, args.host, certs.server_cert, lan),
    )
    store_at, runs = args.root.store_at, args.root.runs

    def channel(gateway):
        dashboard = DashboardPages(gateway, StoreUnion(store_at), canary=gateway.rollouts.role, runs=runs)
        return PhoneChannel(config, gateway, routes=(TakeoverPages(gateway), dashboard))

    return (channel,)


def _openpi_service(
    args: argparse.Namespace, devices, tls_cert: bytes | None, tls_key: bytes | None
) -> tuple[ServiceFactory, ...]:
    """openpi's websocket policy-server protocol beside the gateway when --openpi-port is given (docs/openpi.md);
    it shares the gateway's batched remote inference, device credentials (Api-Key) and TLS."""
    if args.openpi_port is None:
        return ()
    from cloud.channels.openpi_server import OpenPiConfig, OpenPiServer, ssl_context

    context = ssl_context(tls_cert, tls_key) if tls_cert and tls_key else None
    config = OpenPiConfig(host=args.host, port=args.openpi_port, default_policy=args.openpi_policy)
    return (lambda gateway: OpenPiServer(gateway.inference, gateway.registry, config, devices, context),)


def _gateway_and_services(
    args: argparse.Namespace, tasks: tuple, devices, tls_cert: bytes | None, tls_key: bytes | None
) -> tuple[GatewayConfig, tuple[ServiceFactory, ...]]:
    """The gateway's config and the services beside it; ValueError naming the flag of a bad field."""
    from cloud.gateway.config import GatewayConfig

    try:
        config = GatewayConfig(
            host=args.host,
            port=args.port,
            max_batch_bytes=mebibytes(args.max_batch_mb),
            tasks=tasks,
            lost_after_s=args.lost_after,
            devices=devices,
            wire_dtype=args.wire_dtype,
            store_codec=args.store_codec,
            tls_cert=tls_cert,
            tls_key=tls_key,
            ingest_log=args.root.ingest_log_at(args.gateway_id),
            canary=args.canary,
            canary_episodes=args.canary_episodes,
            canary_max_episodes=args.canary_max_episodes,
            inference_threads=args.inference_threads,
        )
        return config, _phone_service(args) + _openpi_service(args, devices, tls_cert, tls_key)
    except ConfigError as err:
        raise flag_error(err, CLOUD_FLAGS) from err


def cmd_cloud(args: argparse.Namespace) -> int:
    # Every flag is checked before anything starts: a learner process or an open store would outlive the error.
    try:
        use_model_roots(
            args
        )  # before the learner is spawned: it inherits them, as remote inference and openpi use them
        devices, tls_cert, tls_key = _cloud_security(args)
        learning = None if args.no_learner else learner_config(args)
    except ValueError as err:
        log.error("refusing to start: %s", err)
        return 2
    try:
        tasks = load_tasks(args.tasks) if args.tasks else ()
    except (OSError, ValueError) as err:
        log.error("--tasks: %s", err)
        return 2
    try:
        config, services = _gateway_and_services(args, tasks, devices, tls_cert, tls_key)
    except ValueError as err:
        log.error("refusing to start: %s", err)
        return 2
    from cloud.data.learner_key import learner_signer, verifying_registry
    from cloud.gateway.server import serve

    layout = args.root
    store = _open_store(args)
    if store is None:
        return 2
    # The learner's key is made on the cloud's first start, whether the learner runs here or elsewhere on this data
    # folder: robots learn its public half in the Welcome. The gateway keeps and reads only that public half.
    learner_signer(layout)
    registry = verifying_registry(layout)
    registry.sends_in(config.wire_dtype)  # before the learner's first version: signed for what travels
    learner = None
    if learning is not None:
        context = multiprocessing.get_context("spawn")
        learner = context.Process(target=learner_process, args=(layout, learning), name="learner", daemon=True)
        learner.start()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, store, registry, stop, services=services)

    log.info("cloud data in %s (episode store %s, registry %s)", layout.root, store.root, layout.registry_at)
    try:
        asyncio.run(main())
    except RuntimeError as err:
        if "Failed to bind" not in str(err):  # grpc's words for a port it cannot have
            raise
        log.error("refusing to start: --port %d: cannot listen on %s (is another cloud running?)", args.port, args.host)
        return 2
    finally:
        if learner is not None:
            _stop_learner(learner)
        store.close()  # on object storage: gives the writer's lease back
    log.info("cloud stopped")
    return 0


def _open_store(args: argparse.Namespace):
    """The gateway's store: its partition of the shared store (``--gateway-id``) seeing the others, or the whole store
    as one gateway has always written it; None (logged, naming the flag) when it cannot be opened."""
    from cloud.data.partitions import Partitions, partition_root
    from cloud.data.shared_partition import SharedPartition
    from cloud.data.store import EpisodeStore

    base = args.root.store_at
    where = partition_root(base, args.gateway_id)
    try:
        own = EpisodeStore(where, take_over=args.take_over_store)
    except RuntimeError as err:  # the one-writer lock or lease
        flag = "--gateway-id" if args.gateway_id else "--store" if args.root.shared else "--root"
        log.error("refusing to start: %s: %s; is another cloud running on this data?", flag, err)
        return None
    except (ValueError, OSError) as err:  # a bad URL, object storage unreachable or refusing our credentials
        log.error("refusing to start: --store: cannot open the episode store at %s: %s", where, err)
        return None
    try:
        return SharedPartition(own, Partitions(base, exclude=args.gateway_id))
    except (ValueError, OSError) as err:
        own.close()
        log.error("refusing to start: --store: cannot read the other gateways' partitions of %s: %s", base, err)
        return None


def _gateway_id(text: str) -> str:
    from cloud.data.layout import check_gateway_id

    if not text:  # the default (argparse passes it here too): the store's root, as one gateway
        return ""
    try:
        return check_gateway_id(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--gateway-id: ")) from err


def _image_size(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` -> (height, width); the phone channel's config checks the sizes."""
    height, sep, width = text.partition("x")
    if not (sep and height.isdigit() and width.isdigit()):
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH, each 8..2048, got {text!r}")
    return int(height), int(width)


def _add_canary_args(cloud: argparse.ArgumentParser) -> None:
    cloud.add_argument(
        "--canary",
        type=float,
        default=0.0,
        help="a new version goes first to this share of a policy's robots (0.25) or this many (2), and is promoted or "
        "rolled back by how it does against the version it would replace (default 0: every robot at once)",
    )
    cloud.add_argument(
        "--canary-episodes", type=int, default=10, help="finished episodes each side needs before a canary is judged"
    )
    cloud.add_argument(
        "--canary-max-episodes",
        type=int,
        default=None,
        help="canary episodes after which a version not shown as good is rolled back (default 4 x --canary-episodes)",
    )


def _add_channel_args(cloud: argparse.ArgumentParser) -> None:
    cloud.add_argument(
        "--phone-port",
        type=int,
        default=None,
        help="serve the phone channel and the robots' takeover pages (HTTPS, websockets) on this port; 0: any",
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
        "--pairing-minutes", type=float, default=10.0, help="a phone pairing token expires after this many minutes"
    )
    cloud.add_argument(
        "--openpi-port", type=port, default=None, help="serve openpi clients (websocket policy server) here; 0: any"
    )
    cloud.add_argument("--openpi-policy", default="", help="policy an openpi client drives unless its URL names one")
    cloud.add_argument(
        "--inference-threads",
        type=int,
        default=None,
        help="torch threads for each remote-inference pass (tunnel and openpi); default torch's, one a core. 1 where "
        "the cores are shared (with the learner, or on a small machine): a batched pass then costs less CPU a request",
    )


def _stop_learner(learner: multiprocessing.process.BaseProcess) -> None:
    """Asks the learner to stop (it ends after the round it is training) and, past ``LEARNER_STOP_S``, ends it: a round
    on a busy machine can take longer than a person waits after Ctrl-C. Its version is then not published; a killed
    publish leaves no version behind (files are renamed into place whole)."""
    learner.terminate()  # SIGTERM: the learner's handler sets its stop flag
    learner.join(timeout=LEARNER_STOP_S)
    if learner.is_alive():
        log.warning(
            "the learner was still training %.0f s after the stop; ending it (the round under way is not published)",
            LEARNER_STOP_S,
        )
        learner.kill()
        learner.join()


def register(sub: argparse._SubParsersAction) -> None:
    cloud = sub.add_parser("cloud", help="run the gateway, the episode store and the learner")
    add_root_arg(cloud, shared=True)
    cloud.add_argument(
        "--take-over-store",
        action="store_true",
        help="start although the store on object storage names another writer: only when that cloud is gone "
        "(killed, its machine lost); it left its lease behind",
    )
    cloud.add_argument(
        "--gateway-id",
        type=_gateway_id,
        default="",
        help="one of several gateways on one --store: this one writes its own partition (store/@parts/NAME) and "
        "continues episodes the others began; the learner and export read every partition (default: the store's "
        "root, as a single gateway)",
    )
    cloud.add_argument("--host", default="127.0.0.1")
    cloud.add_argument("--port", type=int, default=7070, help="the gateway's port (0: any free port, logged)")
    cloud.add_argument("--no-learner", action="store_true", help="run the learner elsewhere")
    cloud.add_argument("--tasks", default=None, help="YAML list of tasks (default: each robot runs its own policy)")
    cloud.add_argument("--lost-after", type=float, default=5.0, help="seconds of silence before lost")
    cloud.add_argument("--max-batch-mb", type=float, default=32.0, help="largest step batch accepted")
    cloud.add_argument(
        "--wire-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="float weights on the wire (bfloat16 halves policy updates)",
    )
    cloud.add_argument(
        "--store-codec",
        default="auto",
        choices=["auto", "raw", "h264", "av1"],
        help="how a new dataset keeps its RGB cameras of 32 pixels and more: auto (H.264), raw, h264 or av1 "
        "(smaller AV1 files, slower to encode); a dataset keeps the codec it was made with",
    )
    cloud.add_argument("--tls", action="store_true", help="serve TLS with the certificates of `fleetloop certs init`")
    cloud.add_argument("--certs", default=None, help="certificate folder (default <root>/certs)")
    _add_canary_args(cloud)
    _add_channel_args(cloud)
    add_learner_args(cloud)
    cloud.set_defaults(func=cmd_cloud)
