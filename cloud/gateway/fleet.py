"""The fleet: every resource the cloud knows, its state, and which task it works on.

Robots and phones register when their tunnel opens, prove they are alive with heartbeats and
steps, and get tasks whose capability requirements they meet. The scheduler is plain logic
driven by the gateway (no threads, an injectable clock), so it is tested without a network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from hal.resource import ResourceInfo
from protocol.limits import WAITING_FOR_RESET, WAITING_FOR_VERSION

log = logging.getLogger("fleetloop.fleet")


class State(StrEnum):
    IDLE = "idle"  # online, no task
    ASSIGNED = "assigned"  # has a task, no steps yet
    RUNNING = "running"  # has a task and streams steps
    LOST = "lost"  # no heartbeat within the deadline, or its stream ended
    FAULTED = "faulted"  # reported or caused an error it cannot recover from
    DRAINING = "draining"  # finishes its episode, then takes no new task
    PAUSED = "paused"  # keeps its task but holds still until resumed
    STOPPED = "stopped"  # its task taken away by the operator; holds, takes no task until resumed
    EMERGENCY_STOPPED = "e-stopped"  # latched at the robot until the operator releases it
    WAITING_FOR_RESET = WAITING_FOR_RESET  # its episode ended; it holds until a person says the scene is reset
    WAITING_FOR_VERSION = WAITING_FOR_VERSION  # synchronous schedule: its episodes with this version ran; it holds


# What an edge's heartbeat may say it waits for: the state it is then in, and what the log says when it starts and
# when it ends.
WAITS = {
    WAITING_FOR_RESET: (State.WAITING_FOR_RESET, "waits for its scene to be reset", "the scene is reset"),
    WAITING_FOR_VERSION: (
        State.WAITING_FOR_VERSION,
        "waits for the learner's next version (synchronous schedule)",
        "a new version came",
    ),
}
WAITING_STATES = {state: ended for state, _, ended in WAITS.values()}  # each waiting state: what ends it


@dataclass(frozen=True)
class Backlog:
    """Steps an edge holds that the cloud has not stored yet: above zero while its link is slower than its robot."""

    steps: int = 0
    bytes: int = 0
    oldest_s: float = 0.0


@dataclass(frozen=True)
class Requirements:
    """What a task needs from a resource; empty fields match anything."""

    kind: str = ""
    embodiment: str = ""
    observations: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()
    min_control_hz: float = 0.0

    def unmet(self, resource: ResourceInfo) -> str:
        """Why ``resource`` does not fit, in words; empty when it does."""
        caps = resource.capabilities
        if self.kind and resource.kind != self.kind:
            return f"kind {resource.kind} is not {self.kind}"
        if self.embodiment and caps.embodiment != self.embodiment:
            return f"embodiment {caps.embodiment} is not {self.embodiment}"
        missing = set(self.observations) - {spec.name for spec in caps.observation}
        if missing:
            return f"lacks observations {sorted(missing)}"
        missing = set(self.cameras) - set(caps.cameras)
        if missing:
            return f"lacks cameras {sorted(missing)}"
        if caps.control_hz < self.min_control_hz:
            return f"runs at {caps.control_hz:.0f} Hz, below {self.min_control_hz:.0f} Hz"
        return ""


@dataclass(frozen=True)
class Task:
    name: str
    policy_name: str
    instruction: str = ""
    requires: Requirements = Requirements()
    count: int = 1  # how many resources it wants; 0 takes every matching one

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("task.name is missing")
        if not self.policy_name:
            raise ValueError(f"task {self.name}: policy_name is missing")
        if self.count < 0:
            raise ValueError(f"task {self.name}: count must be >= 0, got {self.count}")


@dataclass
class FleetMember:
    resource: ResourceInfo
    state: State = State.IDLE
    task: str = ""
    last_seen: float = 0.0
    policy_version: int = 0
    steps: int = 0
    interventions: int = 0
    before_estop: State | None = None  # what it was doing when the emergency stop came (back to it on release)
    backlog: Backlog = Backlog()  # its upload backlog, as its last heartbeat said

    @property
    def online(self) -> bool:
        return self.state not in (State.LOST, State.FAULTED)


@dataclass
class FleetScheduler:
    lost_after_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    tasks: dict[str, Task] = field(default_factory=dict)
    members: dict[str, FleetMember] = field(default_factory=dict)
    on_assign: Callable[[str, Task | None], None] | None = None  # resource id, its new task (None: none)
    allows: Callable[[str, Task], bool] | None = None  # whether a resource may take a task (its credential)

    def add_task(self, task: Task) -> None:
        self.tasks[task.name] = task
        self.schedule()

    def set_tasks(self, tasks: Iterable[Task]) -> None:
        """Replaces every task; a resource whose task is gone or changed is released and scheduled again."""
        new = {task.name: task for task in tasks}
        for member in self.members.values():
            if member.task and new.get(member.task) != self.tasks.get(member.task):
                self._release(member)
                if member.state in (State.ASSIGNED, State.RUNNING, *WAITING_STATES):
                    member.state = State.IDLE
        self.tasks = new
        self.schedule()

    # ---- what the gateway reports ---------------------------------------------------------------------------

    def register(self, resource: ResourceInfo) -> FleetMember:
        member = self.members.get(resource.id)
        if member is None:
            member = self.members[resource.id] = FleetMember(resource)
            log.info(
                "%s joined the fleet (%s, %s, %.0f Hz)",
                resource.id,
                resource.kind,
                resource.capabilities.embodiment,
                resource.capabilities.control_hz,
            )
        else:
            member.resource = resource
            if member.state in (State.LOST, State.FAULTED):
                log.info("%s is back", resource.id)
                member.state = State.IDLE
                member.task = ""
        member.last_seen = self.clock()
        self.schedule()
        return member

    def seen(self, resource_id: str, steps: int = 0, interventions: int = 0, policy_version: int | None = None) -> None:
        member = self.members.get(resource_id)
        if member is None or member.state == State.FAULTED:
            return
        if member.state == State.LOST:  # silent for a while, but its stream is alive: it is back
            log.info("%s is heard from again", resource_id)
            member.state = State.IDLE
            member.last_seen = self.clock()
            self.schedule()
        member.last_seen = self.clock()
        member.steps += steps
        member.interventions += interventions
        if policy_version is not None:
            member.policy_version = policy_version
        if steps and member.state == State.ASSIGNED:
            member.state = State.RUNNING

    def reported(self, resource_id: str, waiting_for: str, backlog: Backlog | None = None) -> None:
        """What the edge says it waits for (every heartbeat): one of ``WAITS``, or "" while it simply works; and its
        upload backlog."""
        member = self.members.get(resource_id)
        if member is None:
            return
        if backlog is not None:
            member.backlog = backlog
        if waiting_for in WAITS and member.state in (State.ASSIGNED, State.RUNNING):
            member.state, waits, _ = WAITS[waiting_for]
            log.info("%s %s", resource_id, waits)
        elif not waiting_for and member.state in WAITING_STATES:
            log.info("%s: %s; it works again", resource_id, WAITING_STATES[member.state])
            member.state = State.RUNNING

    def disconnected(self, resource_id: str) -> None:
        member = self.members.get(resource_id)
        if member is not None and member.online:
            self._lose(member, "its tunnel closed")

    def fault(self, resource_id: str, reason: str) -> None:
        member = self.members.get(resource_id)
        if member is not None:
            log.warning("%s faulted: %s", resource_id, reason)
            self._release(member)
            member.state = State.FAULTED
            self.schedule()

    def check(self) -> list[str]:
        """Marks silent resources lost and reschedules; returns the ids newly lost."""
        now = self.clock()
        lost = [m for m in self.members.values() if m.online and now - m.last_seen > self.lost_after_s]
        for member in lost:
            self._lose(member, f"no heartbeat for {now - member.last_seen:.1f} s")
        return [m.resource.id for m in lost]

    # ---- what an operator asks --------------------------------------------------------------------------------

    def pause(self, resource_id: str) -> None:
        member = self._member(resource_id)
        if member.online:
            member.state = State.PAUSED
            log.info("%s paused by the operator (keeps task %s)", resource_id, member.task or "none")

    def resume(self, resource_id: str) -> None:
        member = self._member(resource_id)
        if member.state in (State.PAUSED, State.DRAINING, State.STOPPED, State.FAULTED):
            member.state = State.ASSIGNED if member.task else State.IDLE
            log.info("%s resumed", resource_id)
            self.schedule()

    def drain(self, resource_id: str) -> None:
        member = self._member(resource_id)
        if member.online:
            log.info("%s draining: it takes no new task", resource_id)
            self._release(member)
            member.state = State.DRAINING
            self.schedule()

    def stop(self, resource_id: str) -> None:
        """Takes the resource's task away at once; it idles (and holds) until given another."""
        member = self._member(resource_id)
        log.info("%s stopped by the operator", resource_id)
        self._release(member)
        if member.online:
            member.state = State.STOPPED
        self.schedule()

    def emergency_stopped(self, resource_id: str, released: bool) -> None:
        """Records an emergency stop sent to (or released at) the resource, so the fleet shows it."""
        member = self._member(resource_id)
        if not released and member.state != State.EMERGENCY_STOPPED:
            member.before_estop, member.state = member.state, State.EMERGENCY_STOPPED
        elif released and member.state == State.EMERGENCY_STOPPED:
            member.state, member.before_estop = member.before_estop or State.IDLE, None

    # ---- scheduling ---------------------------------------------------------------------------------------------

    def schedule(self) -> None:
        """Gives each task that wants more resources the idle ones that meet its requirements."""
        for task in self.tasks.values():
            working = [m for m in self.members.values() if m.task == task.name and m.online]
            wanted = (task.count - len(working)) if task.count else None
            for member in sorted(self.members.values(), key=lambda m: m.resource.id):
                if wanted is not None and wanted <= 0:
                    break
                if member.state != State.IDLE or task.requires.unmet(member.resource):
                    continue
                if self.allows is not None and not self.allows(member.resource.id, task):
                    continue
                member.task = task.name
                member.state = State.ASSIGNED
                log.info("%s assigned to task %s (policy %s)", member.resource.id, task.name, task.policy_name)
                if self.on_assign:
                    self.on_assign(member.resource.id, task)
                if wanted is not None:
                    wanted -= 1

    def task_of(self, resource_id: str) -> Task | None:
        member = self.members.get(resource_id)
        return self.tasks.get(member.task) if member and member.task else None

    def _member(self, resource_id: str) -> FleetMember:
        member = self.members.get(resource_id)
        if member is None:
            raise KeyError(f"resource_id: no resource {resource_id!r} in the fleet")
        return member

    def _release(self, member: FleetMember) -> None:
        if member.task:
            member.task = ""
            if self.on_assign:
                self.on_assign(member.resource.id, None)

    def _lose(self, member: FleetMember, why: str) -> None:
        log.warning(
            "%s lost: %s%s",
            member.resource.id,
            why,
            f"; its task {member.task} goes to another capable resource" if member.task else "",
        )
        self._release(member)
        member.state = State.LOST
        self.schedule()
