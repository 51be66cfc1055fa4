"""A small conv-net policy: uint8 camera image(s) plus an optional state vector."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from policies.mlp import NormalizedPolicy, mlp


class ImageEncoder(nn.Module):
    """(B, H, W, C) uint8 -> (B, features). Strided convs then a 4x4 average pool keep it cheap on CPU."""

    def __init__(self, channels_in: int, channels: list[int], features: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(channels_in if i == 0 else channels[i - 1], c, 3, stride=2, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.out = nn.Linear(channels[-1] * 16, features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return torch.relu(self.out(self.convs(x)))


def image_encoders(
    observation: dict[str, dict[str, Any]], image_keys: list[str], channels: list[int], features: int
) -> nn.ModuleDict:
    """One small CNN per camera (views differ too much to share filters usefully at this size)."""
    return nn.ModuleDict({k: ImageEncoder(observation[k]["shape"][2], channels, features) for k in image_keys})


def observation_features(
    policy: NormalizedPolicy, encoders: nn.ModuleDict, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """``encoders``' features of ``policy``'s cameras, then its normalized state: what an actor or critic sees."""
    parts = [encoders[k](batch[f"obs.{k}"]) for k in policy.image_keys]
    state = policy.normalized_state(batch)
    if state is not None:
        parts.append(state)
    return torch.cat(parts, dim=-1)


class CNNPolicy(NormalizedPolicy):
    type_name: ClassVar[str] = "cnn"

    def __init__(
        self,
        observation: dict[str, dict[str, Any]],
        action_dim: int,
        chunk_size: int = 1,
        channels: tuple[int, ...] | list[int] = (32, 64, 64),
        image_features: int = 128,
        hidden: tuple[int, ...] | list[int] = (256, 256),
    ) -> None:
        super().__init__(observation, action_dim, chunk_size)
        if not self.image_keys:
            raise ValueError("CNNPolicy needs at least one uint8 (H, W, C) image observation")
        self.channels = [int(c) for c in channels]
        self.image_features = int(image_features)
        self.hidden = [int(h) for h in hidden]
        self.encoders = image_encoders(self.observation, self.image_keys, self.channels, self.image_features)
        n_in = self.image_features * len(self.image_keys) + self.state_dim
        self.head = mlp([n_in, *self.hidden, self.chunk_size * self.action_dim])

    def config_dict(self) -> dict[str, Any]:
        return {
            **self.base_config(),
            "channels": self.channels,
            "image_features": self.image_features,
            "hidden": self.hidden,
        }

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        features = observation_features(self, self.encoders, batch)
        return self.head(features).reshape(-1, self.chunk_size, self.action_dim)
