"""A small conv-net policy: uint8 camera image(s) plus an optional state vector."""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import nn

from hal.config import Items
from policies.base import Width
from policies.mlp import NormalizedConfig, NormalizedPolicy

# Strided convs halve the image each time: more layers than this see nothing a 4x4 pool would not.
Channels = Annotated[Items[Annotated[int, Field(ge=1, le=1024)]], Field(min_length=1, max_length=8)]


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


class CameraConfig(NormalizedConfig):
    """Cameras through ``ImageEncoder``s: the CNN policy's and the SAC actor's (whose defaults are smaller)."""

    channels: Channels = (32, 64, 64)
    image_features: Width = 128


class CameraPolicy(NormalizedPolicy):
    """A ``NormalizedPolicy`` whose head also sees every camera through its own small CNN (views differ too much
    to share filters usefully at this size)."""

    config: CameraConfig

    def image_encoders(self) -> nn.ModuleDict:
        channels, features = list(self.config.channels), self.config.image_features
        return nn.ModuleDict(
            {k: ImageEncoder(self.observation[k]["shape"][2], channels, features) for k in self.image_keys}
        )


class CNNConfig(CameraConfig):
    config_name = "cnn"
    needs = "image"  # without a camera it would be an MLP


class CNNPolicy(CameraPolicy):
    type_name: ClassVar[str] = "cnn"
    config_type: ClassVar[type[CNNConfig]] = CNNConfig
    head_name: ClassVar[str] = "head"
