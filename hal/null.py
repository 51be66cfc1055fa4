"""A driver with no device behind it: fixed-size observations, fixed-length episodes.

For benchmarks and tests of the loop itself (tick timing, uplink, weight swaps), where a
simulator's physics would only add noise. Images, when asked for, are deterministic noise.
"""

from __future__ import annotations

import numpy as np

from hal.resource import ArraySpec, Capabilities, Transition


class NullRobot:
    def __init__(
        self,
        state_dim: int = 21,
        action_dim: int = 4,
        image_shape: tuple[int, int, int] | None = None,
        control_hz: float = 30.0,
        episode_steps: int = 100,
        seed: int = 0,
    ) -> None:
        observation = [ArraySpec("state", "float32", (state_dim,))]
        if image_shape is not None:
            observation.append(ArraySpec("pixels", "uint8", tuple(image_shape)))
        self._caps = Capabilities(
            observation=tuple(observation),
            action=ArraySpec("action", "float32", (action_dim,), (-1.0,) * action_dim, (1.0,) * action_dim),
            control_hz=control_hz,
            embodiment="null" if image_shape is None else "null_pixels",
            cameras=("pixels",) if image_shape is not None else (),
        )
        self.episode_steps = episode_steps
        self._rng = np.random.default_rng(seed)
        self._image = None if image_shape is None else self._rng.integers(0, 255, image_shape, dtype=np.uint8)
        self._step = 0
        self.holding = False

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def _observe(self) -> dict[str, np.ndarray]:
        obs = {"state": np.full(self._caps.observation[0].shape, self._step, dtype=np.float32)}
        if self._image is not None:
            obs["pixels"] = self._image
        return obs

    def reset(self) -> dict[str, np.ndarray]:
        self._step = 0
        self.holding = False
        return self._observe()

    def apply(self, action: np.ndarray) -> Transition:
        self.holding = False
        self._step += 1
        done = self._step >= self.episode_steps
        return Transition(self._observe(), reward=0.0, done=done, success=False)

    def hold(self) -> None:
        self.holding = True

    def close(self) -> None:
        pass
