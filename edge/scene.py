"""Between two episodes on a real robot: it holds still until the scene is set up again.

After an episode ends, a robot with a person as its operator (or whose driver is configured to say when its scene
is ready, e.g. a ROS 2 topic) waits for "scene ready" before the next episode starts: the person's signal, the
driver's word, or ``timeout_s`` passing (0: no timeout). The fleet view shows it as "waiting for reset" meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.operator import ExplainsSignals, Operator, PersonOperator, Signal
from hal.resource import SaysSceneReady


@dataclass
class SceneWait:
    """One robot's wait for its scene; ``begin`` after an episode, ``check`` every tick, ``finish`` to go on."""

    person: str  # who can say the scene is ready ("" for no one)
    person_help: str  # how they say it ("press Enter"), "" when they cannot
    source: SaysSceneReady | None = None  # the driver, when its config names where word comes from
    timeout_s: float = 0.0
    since: float | None = None  # monotonic time the wait began; None while the robot works
    person_said: str = ""  # who said the scene is ready ("" while nobody did)
    ready_because: str = ""  # why the wait is over ("" while it is not)

    @property
    def waiting(self) -> bool:
        return self.since is not None

    def begin(self, now: float) -> str:
        """Starts waiting; what to tell the person, in their words."""
        self.since, self.person_said, self.ready_because = now, "", ""
        ways = []
        if self.person_help:
            ways.append(f"{self.person_help} when it is ready")
        elif self.person:
            ways.append(f"{self.person} says when it is ready")
        if self.source is not None:
            ways.append(f"publish true on {self.source.scene_ready_source}")
        if self.timeout_s:
            ways.append(f"it goes on by itself after {self.timeout_s:g} s")
        return "waiting for the scene to be reset (" + "; or ".join(ways) + ")"

    def check(self, now: float) -> str:
        """Why the wait is over ("" while it is not): the person, the driver, or the timeout."""
        if not self.ready_because:
            if self.person_said:
                self.ready_because = f"{self.person_said} says so"
            elif self.source is not None and self.source.scene_ready():
                self.ready_because = f"{self.source.scene_ready_source} says so"
            elif self.timeout_s and self.since is not None and now - self.since >= self.timeout_s:
                self.ready_because = f"{self.timeout_s:g} s passed"
        return self.ready_because

    def finish(self) -> None:
        self.since, self.person_said, self.ready_because = None, "", ""


def scene_wait_for(
    local: Operator | None, source: SaysSceneReady | None, timeout_s: float, page: bool = False, always: bool = False
) -> SceneWait | None:
    """The wait a robot needs between episodes: with a person at the robot as its operator (``local``), a driver
    configured to say the scene is ready, or ``always`` (a robot whose only people are at the takeover page); None
    otherwise (a simulator resets itself). ``page``: the takeover page's people may say it too. ValueError naming the
    flag when a wait is needed and nothing could end it."""
    if source is not None and not source.scene_ready_source:
        source = None
    if not isinstance(local, PersonOperator) and source is None and not always:
        return None
    who = local.who if isinstance(local, PersonOperator) else ""
    ways = [local.signal_help(Signal.SCENE_READY) if isinstance(local, ExplainsSignals) else ""]
    if page:
        ways.append("press scene ready on the takeover page")
    help_ = " or ".join(way for way in ways if way)
    if isinstance(local, ExplainsSignals) and not help_ and source is None and not timeout_s:
        raise ValueError(
            f"--scene-ready-timeout: after each episode the robot waits for the scene to be reset, and {who} has no "
            "way to say it is: give a timeout, a keyboard (signals: keyboard), or a scene_ready_topic"
        )
    if always and not isinstance(local, PersonOperator) and not help_ and source is None and not timeout_s:
        raise ValueError(
            "--wait-for-scene: nobody could say the scene is ready (no person at the robot, the takeover page refused "
            "by --no-takeover, no scene_ready_topic): give --scene-ready-timeout, or drop --no-takeover"
        )
    return SceneWait(who, help_, source, timeout_s)
