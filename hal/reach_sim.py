"""A small continuous-control task for tests of RL with interventions: a point reaching a goal in the plane.

``point_reach``: the state is ``[x, y, goal_x, goal_y]`` in [-1, 1]; the action ``[dx, dy]`` in [-1, 1] moves the
point by ``0.1 * action`` (clipped to the arena). The episode succeeds (and terminates) when the point is within
``SUCCESS_RADIUS`` of the goal, and is cut at ``MAX_STEPS``. Reward: ``"sparse"`` is 1 on success and 0 otherwise;
``"dense"`` adds the progress made towards the goal each step (``10 * (d_before - d_after)``, potential-based
shaping, so it does not change which policy is best).

It runs at thousands of steps per second on a CPU, which is what lets a test train SAC over several policy
versions in seconds (gym_hil's Panda with its discrete gripper is far too slow to learn by RL in a test). The driver
is a ``hal.sim.SimRobot`` over it, and ``ReachExpert`` is its scripted operator (a ``edge.operator.Expert``
that ``HGDaggerOperator`` can wrap).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from hal.resource import ArraySpec
from hal.sim import SimRobot, SimTask

STEP = 0.1
SUCCESS_RADIUS = 0.1
MAX_STEPS = 30


class PointReachEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, reward: str = "dense", max_steps: int = MAX_STEPS) -> None:
        if reward not in ("sparse", "dense"):
            raise ValueError(f"reward must be 'sparse' or 'dense', got {reward!r}")
        self.reward_type = reward
        self.max_steps = max_steps
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._pos = np.zeros(2)
        self._goal = np.zeros(2)
        self._steps = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"state": np.concatenate([self._pos, self._goal]).astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        while True:  # start and goal at least 0.5 apart, so no episode is won at once
            self._pos = self.np_random.uniform(-0.8, 0.8, size=2)
            self._goal = self.np_random.uniform(-0.8, 0.8, size=2)
            if np.linalg.norm(self._goal - self._pos) >= 0.5:
                break
        self._steps = 0
        return self._obs(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        before = np.linalg.norm(self._goal - self._pos)
        self._pos = np.clip(self._pos + STEP * action, -1.0, 1.0)
        after = np.linalg.norm(self._goal - self._pos)
        self._steps += 1
        success = bool(after < SUCCESS_RADIUS)
        reward = float(success)
        if self.reward_type == "dense":
            reward += 10.0 * (before - after)
        truncated = not success and self._steps >= self.max_steps
        return self._obs(), reward, success, truncated, {"is_success": success}


@dataclass(frozen=True)
class ReachTask:
    observation: tuple[ArraySpec, ...]
    action: ArraySpec


REACH_TASKS: dict[str, ReachTask] = {
    "point_reach": ReachTask(
        observation=(ArraySpec("state", "float32", (4,), low=(-1.0,), high=(1.0,)),),
        action=ArraySpec("action", "float32", (2,), low=(-1.0, -1.0), high=(1.0, 1.0)),
    )
}


def point_reach_task(reward: str = "dense") -> SimTask:
    """The ``point_reach`` task as ``hal.sim.SimRobot`` builds it (``sim:point_reach`` on an edge)."""
    task = REACH_TASKS["point_reach"]
    return SimTask(
        make_env=lambda: PointReachEnv(reward=reward),
        observation=task.observation,
        action=task.action,
        cameras=(),
        observe=lambda obs: obs,  # the env already gives the named arrays
        success=lambda info: bool(info["is_success"]),
    )


class ReachRobot(SimRobot):
    """A Driver over ``PointReachEnv``: ``hal.sim.SimRobot`` over the ``point_reach`` task."""

    def __init__(self, seed: int | None = None, control_hz: float = 10.0, reward: str = "dense") -> None:
        super().__init__("point_reach", seed=seed, control_hz=control_hz, spec=point_reach_task(reward))


class ReachExpert:
    """Scripted operator: head straight for the goal at full speed, slowing down for the last step."""

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(observation["state"], dtype=np.float64)
        delta = state[2:4] - state[0:2]
        return np.clip(delta / STEP, -1.0, 1.0).astype(np.float32)
