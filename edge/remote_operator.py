"""The people at a robot's takeover page in the cloud: their commands come down the tunnel and drive the robot.

The tunnel's thread hands each ``PersonCommand`` to ``receive`` (checked, then queued); the control thread applies
them at its next tick (``process``, then ``action``). One person holds control at a time: whoever took over drives
until they hand back; anyone else asking is refused and told why (a ``PersonRefused`` up the tunnel). A driving
person's action is applied only while it is fresh: once their commands stop (the page closed, the link lost) the
robot holds within ``fresh_s`` (the watchdog's deadline), and after ``lease_s`` of silence their control lapses and
the policy drives again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge.operator import Signal
from hal.resource import ArraySpec
from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError
from protocol.person import check_person_command

log = logging.getLogger("fleetloop.edge")

MAX_WAITING = 256  # commands queued between two ticks; a flood beyond that drops the oldest
MAX_SESSIONS = 1024  # page connections whose last seq is remembered
MAX_SIGNALS = 64  # labels waiting for the agent to take them

Send = Callable[[pb.EdgeMessage], bool]


@runtime_checkable
class CloudLinked(Protocol):
    """An operator that talks to the cloud over the edge's tunnel (a takeover page's people)."""

    def attach(self, send: Send, policy_version: Callable[[], int]) -> None:
        """``send`` queues a message up the tunnel (False while the link is down); ``policy_version`` is the
        version the robot runs now."""
        ...

    def on_cloud_message(self, message: pb.CloudMessage) -> None:
        """A ``person`` or ``watch`` message from the cloud; runs on the tunnel's thread."""
        ...


@dataclass(frozen=True)
class PersonCommand:
    """A checked command, stamped with this host's monotonic time of arrival."""

    who: str
    session: str
    seq: int
    signals: tuple[Signal, ...]
    action: np.ndarray | None
    left: bool
    arrived: float


class RemoteOperator:
    """The people at the takeover page: who of them drives, and the action they gave last."""

    def __init__(self, action: ArraySpec, fresh_s: float, lease_s: float = 10.0, name: str = "robot") -> None:
        if not 0 < fresh_s <= lease_s:
            raise ValueError(f"fresh_s ({fresh_s}) must be positive and at most lease_s ({lease_s})")
        self.spec = action
        self.dim = int(np.prod(action.shape))
        self.fresh_s = fresh_s
        self.lease_s = lease_s
        self.name = name
        self.controller = ""  # who drives: "" nobody of the page's people
        self.command_seq = 0  # the seq of the controller's last action
        self.send: Send = lambda message: False
        self._session = ""
        self._action: np.ndarray | None = None
        self._action_at = 0.0
        self._heard_at = 0.0
        self._lock = threading.Lock()
        self._waiting: deque[PersonCommand] = deque(maxlen=MAX_WAITING)
        self._last_seq: OrderedDict[str, int] = OrderedDict()
        self._signals: deque[tuple[Signal, str]] = deque(maxlen=MAX_SIGNALS)  # with who gave each

    # ---- the tunnel's thread ------------------------------------------------------------------------------------

    def receive(self, message: pb.PersonCommand) -> None:
        """Checks a command (a bad one is refused, naming the field) and queues it for the next tick."""
        try:
            check_person_command(message, self.dim)
        except CodecError as err:
            log.warning("%s: refused a command from the takeover page: %s", self.name, err)
            self._refuse(_shown(message.who), _shown(message.session), max(message.seq, 0), str(err))
            return
        action = None
        if message.action:
            action = np.asarray(message.action, dtype=self.spec.numpy_dtype).reshape(self.spec.shape)
        command = PersonCommand(
            message.who,
            message.session,
            message.seq,
            tuple(Signal(s) for s in message.signals),
            action,
            message.left,
            time.monotonic(),
        )
        with self._lock:
            self._waiting.append(command)

    # ---- the control thread -------------------------------------------------------------------------------------

    def process(self, now: float, blocked_by: str = "") -> None:
        """Applies the commands that arrived since the last tick, in order. ``blocked_by``: who else drives the robot
        now (the operator at the robot): a take over is refused while they do."""
        with self._lock:
            commands, self._waiting = list(self._waiting), deque(maxlen=MAX_WAITING)
        for command in commands:
            if command.seq <= self._last_seq.get(command.session, 0):
                continue  # older than one already applied, or repeated
            self._remember(command.session, command.seq)
            self._apply(command, blocked_by)
        if self.controller and now - self._heard_at > self.lease_s:
            log.warning(
                "%s: no word from %s for %.0f s: their control lapses and the policy drives again",
                self.name,
                self.controller,
                now - self._heard_at,
            )
            self._release()

    def action(self, now: float) -> np.ndarray | None:
        """The controller's action while it is fresh; None when their commands stopped (the robot holds)."""
        if self._action is None or now - self._action_at > self.fresh_s:
            return None
        return self._action

    def hold_note(self, now: float) -> str:
        """Why the controller's robot holds, in words ("" while it has a fresh action)."""
        if not self.controller or self.action(now) is not None:
            return ""
        if self._action is None:
            return f"{self.controller} took over and has not moved it yet"
        return f"no fresh command from {self.controller} within {self.fresh_s:.2f} s"

    def take_signals(self) -> list[Signal]:
        return [signal for signal, _ in self.take_said()]

    def take_said(self) -> list[tuple[Signal, str]]:
        """The signals since the last call, each with the person at the page who gave it."""
        said, self._signals = list(self._signals), deque(maxlen=MAX_SIGNALS)
        return said

    def forget_action(self) -> None:
        """A new episode: the last action was for the one that ended; the controller keeps control."""
        self._action = None

    def _apply(self, command: PersonCommand, blocked_by: str) -> None:
        who = command.who
        for signal in command.signals:
            if signal is Signal.TAKE_OVER:
                self._take_over(command, blocked_by)
            elif signal is Signal.HAND_BACK:
                if self.controller != who:
                    self._refuse_command(command, f"{who} does not drive {self.name}: nothing to hand back")
                    continue
                self._release()  # the agent says so when it hears the signal
                self._signals.append((signal, who))
            elif self.controller in ("", who):
                self._signals.append((signal, who))
            else:
                self._refuse_command(command, f"{self.controller} drives {self.name}: only they label it now")
        if self.controller != who:
            return  # a watcher's action (or one after a refused take over) moves nothing
        self._heard_at = command.arrived
        if command.left:
            log.warning("%s: %s closed the takeover page while driving; the robot holds", self.name, who)
            self._action = None
        elif command.action is not None:
            self._action, self._action_at, self.command_seq = command.action, command.arrived, command.seq

    def _take_over(self, command: PersonCommand, blocked_by: str) -> None:
        who = command.who
        if self.controller == who:
            self._session = command.session  # the same person from a new page: still theirs
            return
        if self.controller:
            reason = f"{self.controller} drives {self.name} from the takeover page until they hand back"
        elif blocked_by:
            reason = f"{blocked_by} drives {self.name} at the robot until they hand back"
        else:
            self.controller, self._session, self._action, self._heard_at = who, command.session, None, command.arrived
            self._signals.append((Signal.TAKE_OVER, who))
            return
        self._refuse_command(command, reason)

    def _release(self) -> None:
        self.controller, self._session, self._action = "", "", None

    def _remember(self, session: str, seq: int) -> None:
        self._last_seq[session] = seq
        self._last_seq.move_to_end(session)
        while len(self._last_seq) > MAX_SESSIONS:
            self._last_seq.popitem(last=False)

    def _refuse_command(self, command: PersonCommand, reason: str) -> None:
        log.info("%s: refused %s's command: %s", self.name, command.who, reason)
        self._refuse(command.who, command.session, command.seq, reason)

    def _refuse(self, who: str, session: str, seq: int, reason: str) -> None:
        refused = pb.PersonRefused(who=who, session=session, seq=seq, reason=reason[:300])
        self.send(pb.EdgeMessage(person_refused=refused))


def _shown(name: str) -> str:
    """A name from a refused command, safe to send back (the cloud checks it as an id)."""
    return name if name and len(name) <= 128 and name.isprintable() else "?"
