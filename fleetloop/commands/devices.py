"""``fleetloop devices``: issue, list, bind (``allow``) and revoke per-device credentials."""

from __future__ import annotations

import argparse
import logging
import time

from fleetloop.commands.arg_types import add_root_arg
from fleetloop.commands.refusals import refuses_bad_input

log = logging.getLogger("fleetloop")


def _print_devices(registry) -> None:
    from rich.table import Table

    from fleetloop.table_console import table_console

    table = Table(title=f"devices in {registry.path}")
    for column in ("id", "kind", "policies", "datasets", "sources", "state", "added"):
        table.add_column(column)
    for device in registry.devices():
        robot = device.kind == "robot"
        table.add_row(
            device.id,
            device.kind,
            ", ".join(device.policies) or "any",
            (", ".join(device.datasets) or "none: refused until `devices allow`") if robot else "-",
            (", ".join(device.sources) or "sim, robot") if robot else "-",
            "revoked" if device.revoked else "active",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(device.added_unix)),
        )
    table_console().print(table)


@refuses_bad_input("devices {action}")
def cmd_devices(args: argparse.Namespace) -> int:
    from cloud.security.devices import DeviceRegistry

    registry = DeviceRegistry(args.root.devices)
    if args.action == "list":
        _print_devices(registry)
        return 0
    if not args.id:
        raise ValueError(f"id: name the device, e.g. fleetloop devices {args.action} robot-1")
    if args.action == "revoke":
        registry.revoke(args.id)
        log.info("revoked %s: the cloud refuses it from its next call on", args.id)
        return 0
    if args.action == "allow":
        return _allow(registry, args)
    token = registry.add(args.id, args.kind, args.policy, args.embodiment, args.source)
    print(token)  # to stdout only, once: logs never carry a token
    log.info(
        "added %s %s; its token was printed once (keep it on the device, e.g. FLEETLOOP_TOKEN)", args.kind, args.id
    )
    return 0


def _allow(registry, args: argparse.Namespace) -> int:
    """Binds more policies, datasets and sources to a device's record (a record from before records bound datasets);
    its kind and token stay."""
    if not (args.policy or args.embodiment or args.source):
        raise ValueError(
            f"embodiment: say what {args.id} may do, e.g. fleetloop devices allow {args.id} --embodiment pusht"
        )
    device = registry.allow(args.id, args.policy, args.embodiment, args.source)
    log.info(
        "%s may now record into %s and run %s; its token is unchanged",
        device.id,
        ", ".join(device.datasets),
        ", ".join(device.policies) or "any policy",
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    devices = sub.add_parser("devices", help="issue, list, bind (allow) and revoke per-device credentials")
    devices.add_argument("action", choices=["add", "allow", "list", "revoke"])
    devices.add_argument("id", nargs="?", default="", help="device id (the robot's --id)")
    add_root_arg(devices)
    devices.add_argument("--kind", default="robot", choices=["robot", "phone", "operator"])
    devices.add_argument(
        "--policy", action="append", default=[], help="a policy the device may run (repeat; default any)"
    )
    devices.add_argument(
        "--embodiment",
        action="append",
        default=[],
        help="a dataset a robot may record into (repeat; default: its policies' own datasets; a robot needs one or "
        "the other)",
    )
    devices.add_argument(
        "--source", action="append", default=[], choices=["sim", "robot"], help="a source a robot may claim (repeat)"
    )
    devices.set_defaults(func=cmd_devices)
