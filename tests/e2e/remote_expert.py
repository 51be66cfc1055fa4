"""HG-DAgger's simulated person, at a robot's takeover page instead of beside it: it sees only the page's live view
and acts only through the page's protocol (``TakeoverClient``), never through the edge's local operator.

Each live view carries the observation the robot's next tick acts on (``step``) and the policy's action at an
earlier step (``intended_step``). The person applies ``HGDaggerOperator``'s takeover rule to that step's observation
and the policy's action there, as the local operator would; while the rule says intervene, it takes over and sends
``PickCubeExpert``'s action for the newest observation, and once the rule says the policy is on track it hands back.
"""

from __future__ import annotations

import threading

import numpy as np

from edge.operator import HGDaggerOperator, PickCubeExpert
from tests.e2e.takeover_client import TakeoverClient


class RemoteExpert:
    def __init__(self, client: TakeoverClient) -> None:
        self.client = client
        self.expert = PickCubeExpert()
        self.rule = HGDaggerOperator(self.expert)
        self.episode = -1
        self.states: dict[int, np.ndarray] = {}
        self.decided_step = -1
        self.intervening = False
        self.asked = ""  # a take over or hand back sent and not yet seen in a view
        self.actions_sent = 0
        self.takeovers = 0
        self._lock = threading.Lock()
        client.on_view = self.on_view

    def on_view(self, view: dict) -> None:
        with self._lock:
            self._decide(view)

    def _decide(self, view: dict) -> None:
        if view["episode"] != self.episode:  # a new episode: the person starts fresh, as the local operator does
            self.episode, self.decided_step, self.states = view["episode"], -1, {}
            self.rule.reset()
        state = np.asarray(view["state"]["state"], dtype=np.float32)
        self.states[view["step"]] = state
        step = view["intended_step"]
        if step > self.decided_step and step in self.states:
            intended = None if view["intended"] is None else np.asarray(view["intended"], dtype=np.float32)
            _, self.intervening = self.rule.decide({"state": self.states[step]}, intended, step)
            self.decided_step = step
            for old in [s for s in self.states if s < step]:
                del self.states[old]
        driving = view["controller"] == self.client.who
        if (self.asked == "take_over") == driving:
            self.asked = ""  # what was asked for is what the view shows
        if self.intervening:
            signals = () if driving or self.asked else ("take_over",)
            self.takeovers += bool(signals)
            self.asked = self.asked or ("take_over" if signals else "")
            self.client.send(signals, self.expert.act({"state": state}).tolist())
            self.actions_sent += 1
        elif driving and not self.asked:
            self.asked = "hand_back"
            self.client.send(("hand_back",))
