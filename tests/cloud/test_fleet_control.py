"""Operator commands reach the scheduler through the table of allowed actions, and nothing else of it."""

from __future__ import annotations

import asyncio

from cloud.gateway.control import FleetControl
from cloud.gateway.fleet import FleetScheduler, State, Task
from protocol import tunnel_pb2 as pb
from tests.cloud.test_fleet import robot


def command(control: FleetControl, action: str, resource_id: str = "r1") -> pb.FleetCommandReply:
    request = pb.FleetCommand(action=action, resource_id=resource_id)
    return asyncio.run(control.Command(request, context=None))  # no credentials checked: no context read


def control_of_one_robot() -> tuple[FleetControl, FleetScheduler]:
    fleet = FleetScheduler(lost_after_s=3.0)
    fleet.add_task(Task("pick", "panda"))
    fleet.register(robot("r1"))
    return FleetControl(fleet, sessions={}, devices=None), fleet


def test_an_allowed_action_runs_on_the_scheduler() -> None:
    control, fleet = control_of_one_robot()
    reply = command(control, "pause")
    assert reply.ok and fleet.members["r1"].state == State.PAUSED, reply


def test_a_scheduler_method_outside_the_table_is_refused_and_not_called() -> None:
    control, fleet = control_of_one_robot()
    before = fleet.members["r1"].state
    for action in ("schedule", "check", "_release", "disconnected"):
        reply = command(control, action)
        assert not reply.ok and reply.message.startswith("action: must be one of"), reply
    assert fleet.members["r1"].state == before


def test_an_emergency_stop_needs_a_connected_edge() -> None:
    control, _ = control_of_one_robot()
    reply = command(control, "estop")
    assert not reply.ok and reply.message == "r1 is not connected"
