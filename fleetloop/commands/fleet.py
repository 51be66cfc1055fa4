"""``fleetloop fleet``: show the live fleet, pause/resume/drain/stop/estop/release one resource, or promote / roll
back a canary version of a policy (``fleetloop fleet promote POLICY VERSION``)."""

from __future__ import annotations

import argparse
import logging

from fleetloop.commands.arg_types import cloud_address
from fleetloop.commands.token_args import add_token_args, read_token

log = logging.getLogger("fleetloop")


def cmd_fleet(args: argparse.Namespace) -> int:
    import grpc

    from fleetloop.fleet_view import call_failure, command, rollout, show
    from protocol import tunnel_pb2 as pb

    try:
        access = {"ca": args.ca, "token": read_token(args)}
        if args.action == "show":
            return show(args.cloud, args.watch, **access)
        if args.action in ROLLOUT_ACTIONS:
            request = pb.RolloutCommand(
                policy_name=args.resource, version=_version(args), action=args.action, reason=args.reason
            )
            reply = rollout(args.cloud, request, **access)
        elif not args.resource:
            log.error("fleet %s: name the resource, e.g. fleetloop fleet %s robot-1", args.action, args.action)
            return 2
        else:
            reply = command(args.cloud, args.resource, args.action, args.reason, **access)
    except ValueError as err:
        log.error("%s", err)
        return 2
    except grpc.RpcError as err:
        log.error("%s", call_failure(args.cloud, err))
        return 1
    (log.info if reply.ok else log.error)("%s", reply.message)
    return 0 if reply.ok else 2


ROLLOUT_ACTIONS = ("promote", "rollback")


def _version(args: argparse.Namespace) -> int:
    """The VERSION of `fleet promote|rollback POLICY VERSION` ("v3" or "3"); ValueError naming it."""
    text = (args.version or "").removeprefix("v")
    if not args.resource or not text.isdigit() or int(text) < 1:
        raise ValueError(
            f"fleet {args.action}: name the policy and its version, e.g. fleetloop fleet {args.action} pick 3"
            + (f" (got version {args.version!r})" if args.version else "")
        )
    return int(text)


def register(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser(
        "fleet", help="show the live fleet, pause/resume/drain/stop/estop a resource, promote/rollback a canary"
    )
    fleet.add_argument(
        "action",
        nargs="?",
        default="show",
        choices=["show", "pause", "resume", "drain", "stop", "estop", "release", *ROLLOUT_ACTIONS],
    )
    fleet.add_argument(
        "resource", nargs="?", default="", help="resource id for a command; the policy for promote/rollback"
    )
    fleet.add_argument("version", nargs="?", default=None, help="promote/rollback: the canary version (e.g. 3)")
    fleet.add_argument("--cloud", type=cloud_address, default="127.0.0.1:7070", help="the gateway's host:port")
    fleet.add_argument("--watch", action="store_true", help="keep the table live (Ctrl-C ends)")
    fleet.add_argument("--reason", default="", help="said in the logs with the command")
    fleet.add_argument("--ca", default=None, help="CA certificate (ca.pem) to reach the cloud over TLS")
    add_token_args(fleet, "an operator device's")
    fleet.set_defaults(func=cmd_fleet)
