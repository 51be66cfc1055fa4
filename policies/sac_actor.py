"""The SAC actor as a fleetloop policy: a Gaussian over actions, squashed by tanh into the action limits.

``act`` returns the mean action (``tanh`` of the Gaussian's mean, scaled to ``[action_low, action_high]``) as a
chunk of shape (1, action_dim): what the edge runs. The learner samples from it (``sample``) while training. With
``explore`` (what the learner publishes unless ``--no-sac-explore``) ``act`` samples too, as HIL-SERL's actor does
while it collects: the robot's on-policy data then covers what the policy might do, not only its mean.
Its normalization buffers fix the action scale to the limits (``action_mean`` = midpoint, ``action_std`` = half
range), so a published actor needs nothing beside its safetensors file. Camera images (uint8 H x W x C) go through
a small CNN per camera (``policies.cnn.ImageEncoder``) whose features join the normalized state vector.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from policies.cnn import image_encoders, observation_features
from policies.mlp import NormalizedPolicy, mean_std, mlp

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class SACActorPolicy(NormalizedPolicy):
    type_name: ClassVar[str] = "sac_actor"

    def __init__(
        self,
        observation: dict[str, dict[str, Any]],
        action_dim: int,
        action_low: list[float],
        action_high: list[float],
        chunk_size: int = 1,
        hidden: tuple[int, ...] | list[int] = (256, 256),
        explore: bool = False,
        channels: tuple[int, ...] | list[int] = (16, 32, 32),
        image_features: int = 64,
    ) -> None:
        super().__init__(observation, action_dim, chunk_size)
        if not isinstance(explore, bool):
            raise ValueError(f"sac_actor: explore must be true or false, got {explore!r}")
        self.explore = explore
        if self.chunk_size != 1:
            raise ValueError(f"sac_actor: chunk_size must be 1, got {chunk_size}")
        if not self.state_keys and not self.image_keys:
            raise ValueError("sac_actor: needs at least one observation")
        low = [float(x) for x in action_low]
        high = [float(x) for x in action_high]
        if len(low) != self.action_dim or len(high) != self.action_dim:
            raise ValueError(f"sac_actor: action_low/high need {self.action_dim} values, got {len(low)}/{len(high)}")
        if not all(h > lo for lo, h in zip(low, high, strict=True)):
            raise ValueError(f"sac_actor: every action_high must exceed its action_low, got {low} / {high}")
        self.action_low, self.action_high = low, high
        self.hidden = [int(h) for h in hidden]
        self.channels = [int(c) for c in channels]
        self.image_features = int(image_features)
        self.encoders = image_encoders(self.observation, self.image_keys, self.channels, self.image_features)
        self.feature_dim = self.state_dim + self.image_features * len(self.image_keys)
        self.net = mlp([self.feature_dim, *self.hidden, 2 * self.action_dim])
        self.action_mean = (torch.tensor(high) + torch.tensor(low)) / 2
        self.action_std = (torch.tensor(high) - torch.tensor(low)) / 2

    def config_dict(self) -> dict[str, Any]:
        return {
            **self.base_config(),
            "action_low": self.action_low,
            "action_high": self.action_high,
            "hidden": self.hidden,
            "explore": self.explore,
            "channels": self.channels,
            "image_features": self.image_features,
        }

    def fit_normalization(self, batch: dict[str, np.ndarray]) -> None:
        """Only the observation: the action scale is fixed by the limits."""
        if self.state_keys:
            self.state_mean, self.state_std = mean_std(self._state_vector(batch))

    def to_unit(self, action: torch.Tensor) -> torch.Tensor:
        """Actions in the robot's units -> [-1, 1] (clipped just inside, so atanh stays finite)."""
        unit = (action.float().reshape(-1, self.action_dim) - self.action_mean) / self.action_std
        return unit.clamp(-1 + 1e-4, 1 - 1e-4)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The actor's input: each camera's CNN features, then the normalized state vector, (B, feature_dim)."""
        return observation_features(self, self.encoders, batch)

    def gaussian(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log std of the pre-tanh Gaussian, (B, action_dim) each."""
        mean, log_std = self.net(self.features(batch)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized action in [-1, 1] (B, action_dim) and its log-probability (B,)."""
        return squashed_sample(*self.gaussian(batch), generator)

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean action in [-1, 1] as a chunk (B, 1, action_dim); ``act`` scales it to the limits."""
        mean, _ = self.gaussian(batch)
        return torch.tanh(mean).reshape(-1, 1, self.action_dim)

    @torch.no_grad()
    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return self.act_batch([observation])[0]

    @torch.no_grad()
    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        """(B, 1, action_dim) in the robot's units: the mean action, or a sample with ``explore``."""
        if not self.explore:
            return super().act_batch(observations)
        batch = {
            f"obs.{k}": torch.as_tensor(np.stack([np.asarray(o[k]) for o in observations])) for k in self.observation
        }
        unit, _ = self.sample(batch)
        return (unit * self.action_std + self.action_mean).reshape(-1, 1, self.action_dim).numpy().astype(np.float32)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Behaviour cloning of the mean action (in [-1, 1] units), per sample: for pretraining or checks."""
        target = self.to_unit(batch["action"])
        return ((self.predict(batch)[:, 0] - target) ** 2).mean(dim=1)


def squashed_sample(
    mean: torch.Tensor, log_std: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """tanh(mean + std * noise) in [-1, 1] and its log-probability (B,), reparameterized."""
    # Drawn on the generator's device (the CPU's), then moved: the same seed gives the same noise on any device.
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    pre = mean + log_std.exp() * noise
    action = torch.tanh(pre)
    gaussian_logp = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), the numerically stable form.
    squash = (2 * (math.log(2) - pre - nn.functional.softplus(-2 * pre))).sum(-1)
    return action, gaussian_logp - squash
