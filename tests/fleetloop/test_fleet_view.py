"""The fleet table's backlog column: what each robot holds that the cloud has not stored yet."""

from __future__ import annotations

from rich.console import Console

from fleetloop.fleet_view import render
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from protocol import tunnel_pb2 as pb


def member(resource_id: str, **fields) -> pb.FleetMember:
    caps = Capabilities((ArraySpec("state", "float32", (2,)),), ArraySpec("action", "float32", (2,)), 10.0, "arm")
    resource = ResourceInfo(id=resource_id, kind="robot", source="sim", capabilities=caps)
    return pb.FleetMember(resource=resource.to_proto(), state="running", **fields)


def test_the_fleet_table_shows_each_robots_upload_backlog() -> None:
    status = pb.FleetStatus(
        members=[
            member("behind-1", backlog_steps=1240, backlog_bytes=38_000_000, backlog_oldest_s=42.4),
            member("keeps-up-1"),
        ]
    )
    console = Console(width=250, record=True)
    console.print(render(status, "127.0.0.1:7070"))
    lines = {line.split()[1]: line for line in console.export_text().splitlines() if "-1 " in line}
    assert "1,240 steps (38.0 MB), oldest 42 s" in lines["behind-1"]
    assert "steps (" not in lines["keeps-up-1"]
