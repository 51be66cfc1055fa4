"""Operators beside the policy: the interfaces a person's controls implement (``Operator``, ``PersonOperator``,
``Signal``), a scripted expert, and the simulated person of HG-DAgger who takes over when the policy drifts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

import numpy as np

from hal.resource import ShowsTheScene

log = logging.getLogger("fleetloop.edge")

# panda_pick_cube "state" = gym_hil agent_pos (qpos 7, qvel 7, gripper command 1, tcp xyz 3) + cube xyz 3.
_GRIPPER = 14
_TCP = slice(15, 18)
_CUBE = slice(18, 21)
_MAX_GRIPPER_COMMAND = 255.0
_STEP_M = 0.025  # metres per unit of the xyz action
_OPEN, _STAY, _CLOSE = 0.0, 1.0, 2.0


class Expert(Protocol):
    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray: ...


class Operator(Protocol):
    """Someone beside the policy who may take over: the agent asks it every tick."""

    def decide(
        self, observation: dict[str, np.ndarray], policy_action: np.ndarray | None, step_index: int
    ) -> tuple[np.ndarray | None, bool]:
        """Returns (the action to apply, whether the operator is intervening). The action may be None: nothing to
        apply this tick (a person's device gave none and no policy has one), and the robot holds."""
        ...

    def reset(self) -> None:
        """A new episode starts."""
        ...


class Signal(StrEnum):
    """What a person says besides moving the robot (a key, a button, a page's button)."""

    TAKE_OVER = "take_over"  # the person drives from this tick on: every step is an intervention
    HAND_BACK = "hand_back"  # the policy drives again
    SUCCESS = "success"  # the episode ends now, labelled a success
    FAILURE = "failure"  # the episode ends now, labelled a failure
    RERECORD = "rerecord"  # the episode ends and is discarded: the scene is set up again and recorded anew
    SCENE_READY = "scene_ready"  # after an episode: the scene is reset, the next episode may start


@runtime_checkable
class PersonOperator(Operator, Protocol):
    """An operator a person works (keys, a lerobot teleoperator, a browser page): besides driving, it labels
    episodes and says when the scene is reset. The agent drains its signals every tick."""

    @property
    def who(self) -> str:
        """The identity recorded with every step this person drives, e.g. "keyboard@robot-1" or "browser:op-1"."""
        ...

    def take_signals(self) -> list[Signal]:
        """The signals given since the last call, oldest first; never blocks."""
        ...


@runtime_checkable
class SaysWhoSaid(Protocol):
    """A person's operator behind which several people may speak (the arbiter between the robot's own operator and the
    takeover page's people): each signal comes with who gave it, where ``who`` names only who drives now."""

    def take_said(self) -> list[tuple[Signal, str]]:
        """The signals given since the last call with who gave each, oldest first; never blocks. Takes the same
        signals as ``take_signals``: an agent calls one of the two."""
        ...


@runtime_checkable
class ExplainsSignals(Protocol):
    """A person's operator that can say how its person gives a signal, for the log ("press Enter")."""

    def signal_help(self, signal: Signal) -> str:
        """How the person gives ``signal``; "" when they cannot (then a topic or a timeout must)."""
        ...


class PickCubeExpert:
    """Stateless scripted operator for panda_pick_cube: line up over the cube, descend, close, lift.

    Stateless on purpose: its action is a function of the observation alone, so it can label any state
    a policy drives into (what HG-DAgger's corrections need).
    """

    def __init__(self, align_tolerance_m: float = 0.01, grasp_tolerance_m: float = 0.01) -> None:
        self.align_tolerance_m = align_tolerance_m
        self.grasp_tolerance_m = grasp_tolerance_m

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(observation["state"], dtype=np.float64)
        closed = state[_GRIPPER] / _MAX_GRIPPER_COMMAND > 0.5
        tcp, cube = state[_TCP], state[_CUBE]
        delta = cube - tcp
        action = np.zeros(4, dtype=np.float32)
        if closed:
            cube_on_table = cube[2] < 0.03
            if cube_on_table and tcp[2] - cube[2] > 0.03:
                action[3] = _OPEN  # the grasp missed or slipped: open, then the rules below line up again
                return action
            action[2], action[3] = 1.0, _CLOSE  # lift straight up, keep squeezing
            return action
        action[:2] = np.clip(delta[:2] / _STEP_M, -1.0, 1.0)
        if np.linalg.norm(delta[:2]) > self.align_tolerance_m:
            action[3] = _OPEN  # line up at the current height first, so the fingers do not hit the cube
            return action
        action[2] = np.clip(delta[2] / _STEP_M, -1.0, 1.0)
        action[3] = _CLOSE if abs(delta[2]) < self.grasp_tolerance_m else _OPEN
        return action


class SceneAwareExpert:
    """A scripted expert beside a robot that sees the objects only through its camera: it decides from the
    observation plus the scene's state (``ShowsTheScene``), as a person beside the robot sees the cube."""

    def __init__(self, expert: Expert, scene: ShowsTheScene) -> None:
        self.expert = expert
        self.scene = scene

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        state = np.concatenate([np.asarray(observation["state"], np.float64), self.scene.scene_state()])
        return self.expert.act({**observation, "state": state})


@dataclass(frozen=True)
class TakeoverRule:
    """When the simulated person of HG-DAgger takes over and hands back.

    Takes over when the policy's action is farther than ``takeover_distance`` (L2) from the expert's for
    ``takeover_patience`` steps in a row, or at ``deadline_step`` (no success by then: it keeps control to the
    end of the episode). Hands back when the policy's action is within ``handback_distance`` of the expert's
    for ``handback_patience`` steps in a row.

    The handback is deliberately stricter than the takeover (0.3 for 5 steps vs 1.5 for 2): a longer
    correction labels the states around the policy's mistake, not just the one it drifted at. Offline on
    panda_pick_cube this reached 0.6-1.0 autonomous success by rounds 4-6 (0.5/3 was noisier, 1.0/1 worse).
    """

    takeover_distance: float = 1.5
    takeover_patience: int = 2
    deadline_step: int = 40
    handback_distance: float = 0.3
    handback_patience: int = 5


class HGDaggerOperator(Operator):
    """The simulated person of HG-DAgger: watches the policy and drives when it drifts (``TakeoverRule``).
    With no policy action (none loaded, or late) it drives."""

    def __init__(self, expert: Expert, rule: TakeoverRule | None = None) -> None:
        self.expert = expert
        self.rule = rule or TakeoverRule()
        self.reset()

    def reset(self) -> None:
        self.intervening = False
        self._far_steps = 0
        self._near_steps = 0

    def decide(
        self, observation: dict[str, np.ndarray], policy_action: np.ndarray | None, step_index: int
    ) -> tuple[np.ndarray, bool]:
        """Returns (the action to apply, whether the operator is intervening)."""
        expert_action = np.asarray(self.expert.act(observation), dtype=np.float32)
        if policy_action is None:
            return expert_action, True
        if step_index >= self.rule.deadline_step:
            self.intervening = True
            return expert_action, True
        policy_action = np.asarray(policy_action, dtype=np.float32).reshape(expert_action.shape)
        distance = float(np.linalg.norm(policy_action - expert_action))
        if not self.intervening:
            self._far_steps = self._far_steps + 1 if distance > self.rule.takeover_distance else 0
            if self._far_steps >= self.rule.takeover_patience:
                self.intervening, self._near_steps = True, 0
        else:
            self._near_steps = self._near_steps + 1 if distance <= self.rule.handback_distance else 0
            if self._near_steps >= self.rule.handback_patience:
                self.intervening, self._far_steps = False, 0
        return (expert_action, True) if self.intervening else (policy_action, False)


OPERATORS: dict[str, Callable[[], HGDaggerOperator]] = {
    "panda_pick_cube": lambda: HGDaggerOperator(PickCubeExpert()),
}


# Tasks whose robot observes the objects only through a camera: their operator needs the scene from the sim.
SCENE_OPERATORS: dict[str, Callable[[ShowsTheScene], HGDaggerOperator]] = {
    "panda_pick_cube_camera": lambda scene: HGDaggerOperator(SceneAwareExpert(PickCubeExpert(), scene)),
}


def make_operator(task: str, scene: ShowsTheScene | None = None) -> HGDaggerOperator | None:
    """The simulated operator for a task, or None where no scripted operator exists (pusht, or a camera-only task
    without ``scene``, the simulator that shows it the objects)."""
    factory = OPERATORS.get(task)
    if factory is not None:
        return factory()
    scene_factory = SCENE_OPERATORS.get(task)
    return scene_factory(scene) if scene_factory is not None and scene is not None else None


def choose_operator(task: str, asked: str | None, scene: ShowsTheScene | None = None) -> Operator | None:
    """The operator for ``--operator``: "scripted", "none", or None (not given: scripted where the task has one).

    Raises ValueError only when a scripted operator was asked for by name and the task has none."""
    if asked == "none":
        return None
    operator = make_operator(task, scene)
    if operator is None:
        if asked == "scripted":
            raise ValueError(f"--operator scripted: no scripted operator for {task}; use --operator none")
        log.info("no scripted operator for %s: the policy alone drives (the robot holds still without one)", task)
    return operator
