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
from typing import ClassVar

import numpy as np
import torch
from pydantic import model_validator
from torch import nn

from hal.config import Items, invalid
from policies.base import Width
from policies.cnn import CameraConfig, CameraPolicy, Channels
from policies.mlp import mean_std

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class SACActorConfig(CameraConfig):
    """Actions squashed into [action_low, action_high]; one action per prediction (SAC's critics score one)."""

    config_name = "sac_actor"

    action_low: Items[float]
    action_high: Items[float]
    explore: bool = False  # act samples instead of returning the mean (what the robot does while it collects)
    channels: Channels = (16, 32, 32)  # smaller than the CNN policy's: the critics run their own encoders too
    image_features: Width = 64

    @model_validator(mode="after")
    def _fits_sac(self) -> SACActorConfig:
        if self.chunk_size != 1:
            raise invalid(f"must be 1, got {self.chunk_size}", "chunk_size")
        if any(self.action_levels):
            raise invalid("SAC's actor draws continuous actions: no discrete levels", "action_levels")
        for key in ("action_low", "action_high"):
            if len(getattr(self, key)) != self.action_dim:
                raise invalid(f"expected {self.action_dim} values, got {list(getattr(self, key))}", key)
        for i, (low, high) in enumerate(zip(self.action_low, self.action_high, strict=True)):
            if not high > low:
                raise invalid(f"{high} must exceed action_low[{i}] = {low}", "action_high", i)
        return self


class SACActorPolicy(CameraPolicy):
    type_name: ClassVar[str] = "sac_actor"
    config_type: ClassVar[type[SACActorConfig]] = SACActorConfig
    config: SACActorConfig

    def __init__(self, config: SACActorConfig) -> None:
        super().__init__(config)
        self.explore = config.explore  # the edge's switch: a test or a tool may turn sampling off
        self.action_mean = (torch.tensor(config.action_high) + torch.tensor(config.action_low)) / 2
        self.action_std = (torch.tensor(config.action_high) - torch.tensor(config.action_low)) / 2

    def head_outputs(self) -> int:
        """The pre-tanh Gaussian's mean and log std per action dimension."""
        return 2 * self.action_dim

    def fit_normalization(self, batch: dict[str, np.ndarray]) -> None:
        """Only the observation: the action scale is fixed by the limits."""
        if self.state_keys:
            self.state_mean, self.state_std = mean_std(self._state_vector(batch))

    def to_unit(self, action: torch.Tensor) -> torch.Tensor:
        """Actions in the robot's units -> [-1, 1] (clipped just inside, so atanh stays finite)."""
        unit = (action.float().reshape(-1, self.action_dim) - self.action_mean) / self.action_std
        return unit.clamp(-1 + 1e-4, 1 - 1e-4)

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
        unit, _ = self.sample(self.observation_batch(observations))
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
