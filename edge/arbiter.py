"""One controller at a time: the arbiter between the operator at the robot and the people at its takeover page.

The agent sees one operator. Each tick the arbiter asks the local operator (a scripted expert, keys, a teleoperator)
what it would do, applies the takeover page's commands, and gives the robot the action of whoever holds control:
whoever took over keeps it until they hand back, and the other side is refused and told why (a person at the page
by a ``PersonRefused``, the operator at the robot in the log). With no controller the policy drives; with neither a
controller nor a policy action the robot holds (``decide`` returns no action). Every step a person drives is an
intervention, recorded with ``who``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from edge.live_view import DriverTap, LiveView
from edge.operator import Operator, PersonOperator, SaysWhoSaid, Signal
from edge.remote_operator import CloudLinked, RemoteOperator, Send
from hal.drivers import with_safety
from hal.resource import Driver
from hal.safety import SafeDriver
from protocol import tunnel_pb2 as pb

log = logging.getLogger("fleetloop.edge")

LABELS = (Signal.SUCCESS, Signal.FAILURE, Signal.RERECORD, Signal.SCENE_READY)


class Arbiter(PersonOperator, CloudLinked, SaysWhoSaid):
    def __init__(self, local: Operator | None, remote: RemoteOperator, view: LiveView, name: str = "robot") -> None:
        self.local = local
        self.remote = remote
        self.view = view
        self.name = name
        self.local_name = local.who if isinstance(local, PersonOperator) else "the scripted operator"
        self._local_wanted = False  # the local operator intervened at the last tick
        self._local_drives = False
        self._note = ""

    # ---- the cloud's side (the tunnel's thread) -----------------------------------------------------------------

    def attach(self, send: Send, policy_version: Callable[[], int]) -> None:
        self.remote.send = self.view.send = send
        self.view.policy_version = policy_version

    def on_cloud_message(self, message: pb.CloudMessage) -> None:
        kind = message.WhichOneof("body")
        if kind == "person":
            self.remote.receive(message.person)
        elif kind == "watch":
            self.view.watch(message.watch)

    # ---- PersonOperator (the control thread) --------------------------------------------------------------------

    @property
    def who(self) -> str:
        """Who drives now: a person at the page, the person at the robot, or "" (the policy, a scripted operator)."""
        if self.remote.controller:
            return self.remote.controller
        if self._local_drives and isinstance(self.local, PersonOperator):
            return self.local.who
        return ""

    def take_signals(self) -> list[Signal]:
        return [signal for signal, _ in self.take_said()]

    def take_said(self) -> list[tuple[Signal, str]]:
        """The page's people's signals and the local person's, each with who gave it. The page's commands are applied
        here too: between two episodes no tick decides, and its "scene ready" must still be heard."""
        self.remote.process(time.monotonic(), blocked_by=self.local_name if self._local_drives else "")
        said = self.remote.take_said()
        if isinstance(self.local, PersonOperator):
            for signal in self.local.take_signals():
                if self.remote.controller and signal in LABELS:
                    log.warning("%s: %s from %s ignored: %s drives", self.name, signal, self.local_name, self.who)
                    continue
                said.append((signal, self.local.who))
        return said

    def reset(self) -> None:
        if self.local is not None:
            self.local.reset()
        self.remote.forget_action()  # a page's last action was for the episode that ended
        self.view.episode += 1

    def decide(
        self, observation: dict[str, np.ndarray], policy_action: np.ndarray | None, step_index: int
    ) -> tuple[np.ndarray | None, bool]:
        """(the action to apply, or None to hold; whether a person or the local operator drives)."""
        now = time.monotonic()
        local_action, local_wants = None, False
        if self.local is not None:
            local_action, local_wants = self.local.decide(observation, policy_action, step_index)
        if local_wants and not self._local_wanted and self.remote.controller:
            log.warning(
                "%s: %s wants to take over, refused: %s drives from the takeover page until they hand back",
                self.name,
                self.local_name,
                self.remote.controller,
            )
        self._local_wanted = local_wants
        self._local_drives = local_wants and not self.remote.controller
        self.remote.process(now, blocked_by=self.local_name if self._local_drives else "")
        self._local_drives = self._local_drives and not self.remote.controller
        note, level = "", logging.WARNING
        if self.remote.controller:
            action, intervening = self.remote.action(now), True
            note = self.remote.hold_note(now)
        elif self._local_drives:
            action, intervening = local_action, True
        elif policy_action is not None:
            action, intervening = policy_action, False
        else:  # nobody has an action: no policy yet (say so), or its answer came late (hold this tick, no news)
            action, intervening = None, False
            if self.view.policy_version() == 0:
                note = "no policy yet and nobody drives: it moves once a policy arrives or a person takes over"
                level = logging.INFO
        self._say(note, level)
        controller = self.remote.controller or (self.local_name if self._local_drives else "")
        self.view.decided(observation, policy_action, step_index, controller, note, self.remote.command_seq)
        if action is None:
            self.view.held()
        return action, intervening

    def _say(self, note: str, level: int) -> None:
        if note != self._note and note:
            log.log(level, "%s holds still: %s", self.name, note)
        self._note = note


def with_takeover(
    driver: Driver, local: Operator | None, name: str, watchdog_s: float | None, lease_s: float = 10.0
) -> tuple[SafeDriver, Arbiter]:
    """``driver`` behind its safety layer with the live view tapped under it (the page sees the action after every
    limit), and the arbiter between ``local`` and the takeover page's people: their commands hold the robot once
    they are older than the watchdog's deadline. ValueError names what is wrong."""
    view = LiveView(driver.capabilities, name)
    safe = with_safety(DriverTap(driver, view), name, watchdog_s)
    remote = RemoteOperator(safe.capabilities.action, safe.watchdog_s or 0.25, lease_s, name)
    return safe, Arbiter(local, remote, view, name)
