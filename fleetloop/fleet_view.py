"""``fleetloop fleet``: the live fleet as the cloud sees it, and operator commands."""

from __future__ import annotations

import time

import grpc
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from fleetloop.table_console import table_console
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from protocol.channel import bearer, open_channel
from protocol.link_errors import credential_refused, link_failure

STATE_STYLE = {
    "running": "green",
    "assigned": "cyan",
    "idle": "white",
    "paused": "yellow",
    "draining": "yellow",
    "waiting for reset": "yellow",
    "waiting for a new version": "yellow",
    "lost": "red",
    "faulted": "red",
}


def fetch(target: str, timeout_s: float = 3.0, ca: str | None = None, token: str = "") -> pb.FleetStatus:
    with open_channel(target, ca) as channel:
        return pb_grpc.FleetControlStub(channel).Status(
            pb.FleetStatusRequest(), timeout=timeout_s, metadata=bearer(token)
        )


def command(
    target: str,
    resource_id: str,
    action: str,
    reason: str = "",
    timeout_s: float = 3.0,
    ca: str | None = None,
    token: str = "",
) -> pb.FleetCommandReply:
    request = pb.FleetCommand(resource_id=resource_id, action=action, reason=reason)
    with open_channel(target, ca) as channel:
        return pb_grpc.FleetControlStub(channel).Command(request, timeout=timeout_s, metadata=bearer(token))


def rollout(
    target: str, request: pb.RolloutCommand, timeout_s: float = 10.0, ca: str | None = None, token: str = ""
) -> pb.FleetCommandReply:
    """An operator's decision on a canary rollout (``request.action``: "promote" or "rollback")."""
    with open_channel(target, ca) as channel:
        return pb_grpc.FleetControlStub(channel).Rollout(request, timeout=timeout_s, metadata=bearer(token))


def render(status: pb.FleetStatus, target: str) -> Table:
    table = Table(title=f"fleet at {target} ({len(status.members)} resources)")
    columns = ["resource", "kind", "state", "task", "policy", "Hz", "steps", "interventions", "backlog", "seen"]
    refusals = any(member.refused for member in status.members)
    if refusals:  # a version some robot keeps off (not signed, not buildable there): said beside that robot
        columns.append("refused")
    for column in columns:
        table.add_column(
            column, justify="right" if column in ("Hz", "steps", "interventions", "backlog", "seen") else "left"
        )
    for member in status.members:
        caps = member.resource.capabilities
        style = STATE_STYLE.get(member.state, "white")
        row = [
            member.resource.id,
            f"{member.resource.kind} ({caps.embodiment})",
            f"[{style}]{member.state}[/]",
            member.task or "-",
            f"v{member.policy_version}" + (f" (canary v{member.canary_version})" if member.canary_version else ""),
            f"{caps.control_hz:.0f}",
            str(member.steps),
            str(member.interventions),
            backlog_words(member),
            f"{member.seconds_since_seen:.1f} s ago",
        ]
        table.add_row(*row, *([escape(member.refused) or "-"] if refusals else []))
    return table


def backlog_words(member: pb.FleetMember) -> str:
    """What the robot holds that the cloud has not stored yet ("-": nothing): its link is slower than it records."""
    if member.backlog_steps <= 0:
        return "-"
    return (
        f"{member.backlog_steps:,} steps ({member.backlog_bytes / 1e6:.1f} MB), oldest {member.backlog_oldest_s:.0f} s"
    )


def call_failure(target: str, err: grpc.RpcError) -> str:
    """Why a call to the cloud failed: a refused credential says so, and which credential the command wants."""
    if credential_refused(err):
        return (
            f"the cloud at {target} refused the credential ({err.details()}): give an operator device's token "
            "with FLEETLOOP_TOKEN or --token-file (`fleetloop devices add NAME --kind operator`)"
        )
    return f"cannot reach the cloud at {target}: {link_failure(target, err)}"


def show(target: str, watch: bool, interval_s: float = 1.0, ca: str | None = None, token: str = "") -> int:
    console = table_console()
    try:
        status = fetch(target, ca=ca, token=token)
    except grpc.RpcError as err:
        console.print(f"[red]{call_failure(target, err)}[/]")
        return 1
    if not watch:
        console.print(render(status, target))
        return 0
    if not console.is_terminal:
        return _print_every(console, target, status, interval_s, ca, token)
    with Live(render(status, target), console=console, refresh_per_second=2) as live:
        try:
            while True:
                time.sleep(interval_s)
                try:
                    live.update(render(fetch(target, ca=ca, token=token), target))
                except grpc.RpcError as err:
                    live.update(f"[red]{call_failure(target, err)}[/]")
        except KeyboardInterrupt:
            pass
    return 0


def _print_every(
    console: Console, target: str, status: pb.FleetStatus, interval_s: float, ca: str | None, token: str
) -> int:
    """--watch into a pipe or a file: a live view redraws in place, which a log cannot show, so each refresh is
    printed after the last (rich's Live prints nothing to a pipe until it stops)."""
    try:
        while True:
            console.print(render(status, target))
            time.sleep(interval_s)
            while True:
                try:
                    status = fetch(target, ca=ca, token=token)
                    break
                except grpc.RpcError as err:
                    console.print(f"[red]{call_failure(target, err)}[/]")
                    time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0
