"""Simulated robots: a Driver over gymnasium sims (gym_hil's Panda pick-cube, gym_pusht).

``panda_pick_cube_camera`` is the Panda whose observation holds no simulator state: its own joints, gripper and hand
position, and a camera looking down on the table, the only place the cube shows (``top_view``). The view is drawn
from the scene, not rendered: MuJoCo renders one 48x48 frame in about 70 ms on these CPUs, too slow for 10 Hz.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hal.log_filters import DropLines
from hal.resource import ArraySpec, Capabilities, NamesActions, Transition

# gym_hil places the cube with numpy's *global* generator; several robots in one process swap their own
# generator state in around reset under this lock, so each robot stays reproducible from its seed.
_GLOBAL_RNG_LOCK = threading.Lock()


@dataclass(frozen=True)
class SimTask:
    """How to build one sim and translate its observations to named arrays."""

    make_env: Callable[[], Any]  # imports the sim package lazily: only the tasks in use get imported
    observation: tuple[ArraySpec, ...]
    action: ArraySpec
    cameras: tuple[str, ...]
    observe: Callable[[dict[str, Any]], dict[str, np.ndarray]]
    success: Callable[[dict[str, Any]], bool]
    uses_global_rng: bool = False
    action_names: tuple[str, ...] = ()  # one per action entry, for mapping a teleoperator's action by name


# Routine lines the simulators' packages write on every start or reset, which read like news to an operator.
_RESET_DELAY = DropLines("Reset delay of ")  # gym_hil, on the root logger, at every reset (even of 0 s)
_NO_ACCELERATE = DropLines("No OpenGL_accelerate module loaded")  # PyOpenGL's optional speed-up


@contextlib.contextmanager
def _quiet_sim_import() -> Iterator[None]:
    """Silences those lines (the loggers keep their filters), and pygame's pkg_resources warning inside it.

    Its body runs under ``warnings.catch_warnings``: filters it adds end with it."""
    logging.getLogger().addFilter(_RESET_DELAY)  # a root logger filter sees only records logged on root itself
    logging.getLogger("OpenGL.acceleratesupport").addFilter(_NO_ACCELERATE)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API", category=UserWarning)
        yield


def _make_panda_pick_cube() -> Any:
    import gymnasium as gym

    with _quiet_sim_import():
        import gym_hil  # noqa: F401  (registers the env ids)

        # gym_hil builds Boxes from float64 bounds; gymnasium warns on every make
        warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32.*")
        # reset_delay_seconds=0: every gym_hil variant otherwise sleeps 1 s per reset.
        return gym.make(
            "gym_hil/PandaPickCube-v0", reset_delay_seconds=0, random_block_position=True, disable_env_checker=True
        )


def _observe_panda(obs: dict[str, Any]) -> dict[str, np.ndarray]:
    # agent_pos (18) = joint qpos 7, joint qvel 7, gripper command 1 (0..255), tcp position 3; then the cube 3.
    state = np.concatenate([obs["agent_pos"], obs["environment_state"]]).astype(np.float32)
    return {"state": state}


# What the Panda's camera sees from above: the table from x 0.2 to 0.6 m (rows) and y -0.2 to 0.2 m (columns), where
# gym_hil places the cube (x 0.3-0.5, y -0.15-0.15), at 1.25 cm a pixel.
CAMERA_SIDE = 32
_VIEW_LOW, _VIEW_SIZE_M = np.array([0.2, -0.2]), 0.4
_CUBE_SIDE_M, _FINGERS_SIDE_M = 0.04, 0.03


def _coverage(centre: float, half: float, side: int) -> np.ndarray:
    """How much of each pixel along one axis a segment covers (anti-aliased, so positions finer than a pixel
    show)."""
    edges = np.arange(side + 1) / side
    return np.clip(np.minimum(edges[1:], centre + half) - np.maximum(edges[:-1], centre - half), 0, None) * side


def top_view(cube: np.ndarray, tcp: np.ndarray, side: int = CAMERA_SIDE) -> np.ndarray:
    """The table seen from above as uint8 RGB: the cube red (brighter the higher it is lifted), the gripper green."""
    image = np.zeros((side, side, 3), np.float64)
    for channel, xyz, size_m in ((0, cube, _CUBE_SIDE_M), (1, tcp, _FINGERS_SIDE_M)):
        u = (np.asarray(xyz[:2], np.float64) - _VIEW_LOW) / _VIEW_SIZE_M
        half = size_m / 2 / _VIEW_SIZE_M
        brightness = 160 + 95 * np.clip(xyz[2] / 0.2, 0, 1)
        image[:, :, channel] += brightness * np.outer(_coverage(u[0], half, side), _coverage(u[1], half, side))
    return np.clip(image, 0, 255).astype(np.uint8)


def _observe_panda_camera(obs: dict[str, Any]) -> dict[str, np.ndarray]:
    agent = np.asarray(obs["agent_pos"], np.float32)  # qpos 7, qvel 7, gripper command 1, tcp xyz 3
    return {"state": agent, "camera": top_view(np.asarray(obs["environment_state"]), agent[15:18])}


def _make_pusht() -> Any:
    import gymnasium as gym

    with _quiet_sim_import():  # the env's module (and pygame) is imported by gym.make
        import gym_pusht  # noqa: F401  (registers the env ids)

        return gym.make(
            "gym_pusht/PushT-v0",
            obs_type="pixels_agent_pos",
            observation_width=96,
            observation_height=96,
            disable_env_checker=True,
        )


def _observe_pusht(obs: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        "pixels": np.ascontiguousarray(obs["pixels"], dtype=np.uint8),
        "agent_pos": np.asarray(obs["agent_pos"], dtype=np.float32),
    }


_PANDA = SimTask(
    make_env=_make_panda_pick_cube,
    observation=(ArraySpec("state", "float32", (21,)),),
    # [dx, dy, dz] in units of 2.5 cm, gripper 0 open / 1 stay / 2 close.
    action=ArraySpec("action", "float32", (4,), low=(-1.0, -1.0, -1.0, 0.0), high=(1.0, 1.0, 1.0, 2.0)),
    cameras=(),
    observe=_observe_panda,
    success=lambda info: bool(info.get("succeed", False)),
    uses_global_rng=True,
    action_names=("x", "y", "z", "gripper"),
)

SIM_TASKS: dict[str, SimTask] = {
    "panda_pick_cube": _PANDA,
    # The same Panda, seeing the cube only through its camera.
    "panda_pick_cube_camera": replace(
        _PANDA,
        observation=(
            ArraySpec("state", "float32", (18,)),
            ArraySpec("camera", "uint8", (CAMERA_SIDE, CAMERA_SIDE, 3), low=(0.0,), high=(255.0,)),
        ),
        cameras=("camera",),
        observe=_observe_panda_camera,
    ),
    "pusht": SimTask(
        make_env=_make_pusht,
        observation=(
            ArraySpec("pixels", "uint8", (96, 96, 3), low=(0.0,), high=(255.0,)),
            ArraySpec("agent_pos", "float32", (2,), low=(0.0, 0.0), high=(512.0, 512.0)),
        ),
        # Target position of the pusher in the 512x512 arena.
        action=ArraySpec("action", "float32", (2,), low=(0.0, 0.0), high=(512.0, 512.0)),
        cameras=("pixels",),
        observe=_observe_pusht,
        success=lambda info: bool(info.get("is_success", False)),
        action_names=("x", "y"),
    ),
}


class SimRobot(NamesActions):
    """A Driver over one gymnasium sim. After a Transition with ``done``, call ``reset`` before ``apply``."""

    def __init__(
        self, task: str, seed: int | None = None, control_hz: float = 10.0, spec: SimTask | None = None
    ) -> None:
        """``spec`` builds a task that is not one of ``SIM_TASKS`` (``hal.reach_sim``'s), named ``task``."""
        if spec is None and task not in SIM_TASKS:
            raise ValueError(f"unknown sim task {task!r}; known: {sorted(SIM_TASKS)}")
        self.task = task
        self._spec = spec or SIM_TASKS[task]
        self._capabilities = Capabilities(
            observation=self._spec.observation,
            action=self._spec.action,
            control_hz=control_hz,
            embodiment=task,
            cameras=self._spec.cameras,
        )
        self._env = self._spec.make_env()
        self._seed = seed
        self._first_reset = True
        # This robot's own stream for numpy's global generator (fresh entropy when no seed is given).
        self._global_rng_state = np.random.RandomState(np.random.SeedSequence(seed).generate_state(1)[0]).get_state()
        self.holding = False  # a sim does not move between steps, so hold() only records the request
        self._scene = np.zeros(0, np.float32)  # the sim's objects as of the last observation (``scene_state``)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def action_names(self) -> tuple[str, ...]:
        return self._spec.action_names

    def reset(self) -> dict[str, np.ndarray]:
        # The env's own generator is seeded once; later resets continue it so episodes differ.
        seed = self._seed if self._first_reset else None
        self._first_reset = False
        if self._spec.uses_global_rng:
            with _GLOBAL_RNG_LOCK:
                saved = np.random.get_state()
                np.random.set_state(self._global_rng_state)
                try:
                    obs, _ = self._env.reset(seed=seed)
                    self._global_rng_state = np.random.get_state()
                finally:
                    np.random.set_state(saved)
        else:
            obs, _ = self._env.reset(seed=seed)
        self.holding = False
        return self._observe(obs)

    def _observe(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        if "environment_state" in obs:
            self._scene = np.asarray(obs["environment_state"], np.float32).copy()
        return self._spec.observe(obs)

    def scene_state(self) -> np.ndarray:
        """The objects' state as of the last observation (``hal.resource.ShowsTheScene``): the cube's xyz on the
        Panda; empty for a sim that has none apart from its observation."""
        return self._scene

    def apply(self, action: np.ndarray) -> Transition:
        action = np.asarray(action, dtype=self._capabilities.action.numpy_dtype).reshape(
            self._capabilities.action.shape
        )
        obs, reward, terminated, truncated, info = self._env.step(action)
        self.holding = False
        return Transition(
            observation=self._observe(obs),
            reward=float(reward),
            done=bool(terminated or truncated),
            success=self._spec.success(info),
            info={"terminated": bool(terminated), "truncated": bool(truncated)},
        )

    def hold(self) -> None:
        """Nothing to stop: a sim only advances when stepped. Remembered in ``holding`` for inspection."""
        self.holding = True

    def close(self) -> None:
        self._env.close()
