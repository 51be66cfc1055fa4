"""The fleet's control service: what `fleetloop fleet` asks (the fleet's state) and the operator's commands."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import grpc

from cloud.data.version_registry import check_policy_name
from cloud.gateway.fleet import FleetScheduler
from cloud.gateway.rollouts import Rollouts
from cloud.gateway.sessions import Session, checks_credentials
from cloud.security.devices import DeviceRegistry
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from protocol.sanitize import printable

log = logging.getLogger("fleetloop.gateway")


# The operator commands the scheduler carries out, each by name: nothing else of the scheduler can be called.
SCHEDULER_ACTIONS: dict[str, Callable[[FleetScheduler, str], None]] = {
    "pause": FleetScheduler.pause,
    "resume": FleetScheduler.resume,
    "drain": FleetScheduler.drain,
    "stop": FleetScheduler.stop,
}
EDGE_ACTIONS = ("estop", "release")  # go down the edge's tunnel: the robot itself stops or moves again
ACTIONS = (*SCHEDULER_ACTIONS, *EDGE_ACTIONS)


class FleetControl(pb_grpc.FleetControlServicer):
    """What `fleetloop fleet` asks: the fleet's state, and operator commands."""

    ACTIONS = ACTIONS

    def __init__(
        self,
        fleet: FleetScheduler,
        sessions: Mapping[str, Session],
        devices: DeviceRegistry | None,
        rollouts: Rollouts | None = None,
    ) -> None:
        self.fleet = fleet
        self.sessions = sessions  # the gateway's: it adds and removes them
        self.devices = devices
        self.rollouts = rollouts  # None: canary rollouts are off

    async def _check_operator(self, context: grpc.aio.ServicerContext) -> None:
        """With device credentials on, only an operator device may look at or command the fleet."""
        if self.devices is None or not checks_credentials(self.devices):
            return
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        token = header.removeprefix("Bearer ").strip()
        device = self.devices.identify(token) if token else None
        if device is None or device.kind != "operator":
            why = "no credential given" if not token else "not the credential of an operator device"
            log.warning("refused a fleet control call: %s", why)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"authorization: {why}")

    async def Status(self, request: pb.FleetStatusRequest, context) -> pb.FleetStatus:  # noqa: N802
        await self._check_operator(context)
        now = self.fleet.clock()
        canaries = self.rollouts.canary_members() if self.rollouts is not None else {}
        return pb.FleetStatus(
            members=[
                pb.FleetMember(
                    resource=m.resource.to_proto(),
                    state=str(m.state),
                    task=m.task,
                    policy_version=m.policy_version,
                    steps=m.steps,
                    interventions=m.interventions,
                    seconds_since_seen=now - m.last_seen,
                    refused=self._refusals(m.resource.id),
                    backlog_steps=m.backlog.steps,
                    backlog_bytes=m.backlog.bytes,
                    backlog_oldest_s=m.backlog.oldest_s,
                    canary_version=canaries.get(m.resource.id, ("", 0))[1],
                )
                for m in sorted(self.fleet.members.values(), key=lambda m: m.resource.id)
            ]
        )

    def _refusals(self, resource_id: str) -> str:
        session = self.sessions.get(resource_id)
        return session.refusals() if session is not None else ""

    async def Command(self, request: pb.FleetCommand, context) -> pb.FleetCommandReply:  # noqa: N802
        await self._check_operator(context)
        ok, message = self.apply(request.action, request.resource_id, request.reason or "operator")
        return pb.FleetCommandReply(ok=ok, message=message)

    def apply(self, action: str, resource_id: str, reason: str) -> tuple[bool, str]:
        """Carries out an operator's command (``fleetloop fleet``, the dashboard); (done, what it did or why not)."""
        fleet = self.fleet
        if action not in self.ACTIONS:
            return False, f"action: must be one of {self.ACTIONS}"
        if resource_id not in fleet.members:
            return False, f"resource_id: no resource {resource_id!r}"
        session = self.sessions.get(resource_id)
        if action in EDGE_ACTIONS:
            ok, message = self._emergency_stop(action, resource_id, session, reason)
            if ok:
                fleet.emergency_stopped(resource_id, released=action == "release")
            return ok, message
        SCHEDULER_ACTIONS[action](fleet, resource_id)
        if session is not None and action in ("pause", "resume"):
            session.send_assignment(fleet.task_of(resource_id), paused=action == "pause")
        return True, f"{resource_id} is now {fleet.members[resource_id].state}"

    async def Rollout(self, request: pb.RolloutCommand, context) -> pb.FleetCommandReply:  # noqa: N802
        """An operator promotes or rolls back a canary version (or rolls back the version every robot runs)."""
        await self._check_operator(context)
        if self.rollouts is None:
            return pb.FleetCommandReply(
                ok=False,
                message="canary rollouts are off: start the cloud with --canary, or republish an older "
                "version with `fleetloop policy rollback`",
            )
        try:
            name = check_policy_name(request.policy_name)
            reason = printable(request.reason or "no reason given")
            message = self.rollouts.decide(name, int(request.version), request.action, "operator", reason)
        except ValueError as err:
            return pb.FleetCommandReply(ok=False, message=printable(str(err)))
        return pb.FleetCommandReply(ok=True, message=message)

    @staticmethod
    def _emergency_stop(action: str, resource_id: str, session: Session | None, reason: str) -> tuple[bool, str]:
        """Sends an emergency stop (or its release) down the resource's tunnel."""
        if session is None:
            return False, f"{resource_id} is not connected"
        release = action == "release"
        session.send(pb.CloudMessage(emergency_stop=pb.EmergencyStop(reason=reason, release=release)))
        shown = printable(reason)
        log.warning("%s: emergency stop %s (%s)", resource_id, "released" if release else "sent", shown)
        return True, f"{action} sent to {resource_id}"
