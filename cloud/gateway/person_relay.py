"""The people at robots' takeover pages, as the gateway sees them: who watches which robot, their commands down the
robot's tunnel, and the robot's live views and refusals back to their pages.

A robot's edge sends live views only while someone watches: the relay tells it how many do (a ``WatchRequest``,
again whenever it reconnects), at the highest rate and image size any of them asked for.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from cloud.gateway.sessions import Session
from protocol import tunnel_pb2 as pb
from protocol.person import check_live_view, check_person_refused

log = logging.getLogger("fleetloop.gateway")


class Watcher(Protocol):
    """One takeover page connection (cloud/channels/takeover_page.py); called on the gateway's event loop."""

    session_id: str
    rate_hz: float
    image_side: int

    def live_view(self, view: pb.LiveView) -> None: ...

    def refused(self, refused: pb.PersonRefused) -> None: ...

    def robot_connected(self, session: Session) -> None: ...


class PersonRelay:
    def __init__(self, sessions: dict[str, Session]) -> None:
        self.sessions = sessions  # the gateway's: resource id -> its open tunnel
        self.watchers: dict[str, dict[str, Watcher]] = {}  # robot id -> page session id -> page
        self.views = 0
        self.refused = 0

    def watch(self, robot_id: str, watcher: Watcher) -> None:
        self.watchers.setdefault(robot_id, {})[watcher.session_id] = watcher
        self._tell(robot_id)

    def unwatch(self, robot_id: str, watcher: Watcher) -> None:
        pages = self.watchers.get(robot_id, {})
        if pages.pop(watcher.session_id, None) is not None:
            if not pages:
                del self.watchers[robot_id]
            self._tell(robot_id)

    def session(self, robot_id: str) -> Session | None:
        session = self.sessions.get(robot_id)
        return None if session is None or session.closed else session

    def opened(self, session: Session) -> None:
        """A robot's tunnel opened (or reopened): its watchers learn of it, and it learns of them."""
        pages = list(self.watchers.get(session.resource.id, {}).values())
        for page in pages:
            page.robot_connected(session)
        if pages:
            self._tell(session.resource.id)

    def command(self, robot_id: str, command: pb.PersonCommand) -> bool:
        """Sends a person's command down the robot's tunnel; False when the robot is not connected."""
        session = self.session(robot_id)
        if session is None:
            return False
        command.sent_mono_ns = time.monotonic_ns()
        session.send(pb.CloudMessage(person=command))
        return True

    def receive(self, session: Session, message: pb.EdgeMessage) -> None:
        """A live view or a refusal from a robot's edge; CodecError (naming the field) when it is malformed."""
        robot_id = session.resource.id
        pages = self.watchers.get(robot_id, {})
        if message.HasField("live_view"):
            check_live_view(message.live_view)
            self.views += 1
            for page in list(pages.values()):
                page.live_view(message.live_view)
        else:
            refused = message.person_refused
            check_person_refused(refused)
            self.refused += 1
            page = pages.get(refused.session)
            if page is not None:
                page.refused(refused)

    def _tell(self, robot_id: str) -> None:
        session = self.session(robot_id)
        if session is None:
            return
        pages = list(self.watchers.get(robot_id, {}).values())
        watch = pb.WatchRequest(watchers=len(pages))
        if pages:
            watch.rate_hz = max(page.rate_hz for page in pages)
            watch.max_image_side = max(page.image_side for page in pages)
        log.info("%s: %d watching its takeover page", robot_id, len(pages))
        session.send(pb.CloudMessage(watch=watch))
