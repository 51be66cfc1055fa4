"""``fleetloop policy``: list a policy's published versions, or roll back to an earlier one."""

from __future__ import annotations

import argparse
import logging

from fleetloop.commands.arg_types import add_root_arg, positive_int
from fleetloop.commands.refusals import refuses_bad_input

log = logging.getLogger("fleetloop")


@refuses_bad_input("policy {action}")
def cmd_policy(args: argparse.Namespace) -> int:
    from cloud.data.version_registry import PolicyRegistry

    registry = PolicyRegistry(args.root.registry)
    if args.action == "rollback":
        version = registry.rollback(args.name, args.to)
        rolled_back_to = version.note.removeprefix("rollback to ")
        log.info(
            "%s v%d published with the weights of %s; edges take it next", args.name, version.version, rolled_back_to
        )
        return 0
    latest = registry.latest(args.name)
    if latest is None:
        raise ValueError(f"policy_name: no versions of {args.name!r}")
    for number in registry.versions(args.name):
        marker = " (latest)" if number == latest.version else ""
        note = latest.note if number == latest.version else ""
        print(f"v{number}{marker}{': ' + note if note else ''}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="list a policy's versions, or roll back to an earlier one")
    policy.add_argument("action", choices=["list", "rollback"])
    policy.add_argument("name", help="the policy, e.g. panda_pick_cube")
    add_root_arg(policy)
    policy.add_argument("--to", type=positive_int, default=None, help="version to go back to (default: previous)")
    policy.set_defaults(func=cmd_policy)
