"""A small MLP policy over flattened float observations (behaviour cloning, optional action chunks)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from policies.base import Policy

# A feature or action dimension that barely varies in the data would otherwise blow up when it does vary.
MIN_STD = 1e-2


def is_image(spec: dict[str, Any]) -> bool:
    """uint8 arrays of shape (H, W, C) are camera images; everything else is a state vector."""
    return spec["dtype"] == "uint8" and len(spec["shape"]) == 3


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mean_std(values: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    std = np.maximum(values.std(axis=0), MIN_STD)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)


class NormalizedPolicy(Policy):
    """Shared plumbing: a state vector from the non-image keys and the action, both normalized by buffers.

    Config: ``observation`` {name: {"shape": [...], "dtype": "..."}}, ``action_dim``, ``chunk_size``.
    Batches carry "obs.<name>" (B, *shape) and "action" (B, action_dim) or (B, chunk_size, action_dim).
    """

    def __init__(self, observation: dict[str, dict[str, Any]], action_dim: int, chunk_size: int = 1) -> None:
        super().__init__()
        self.observation = {k: {"shape": list(v["shape"]), "dtype": str(v["dtype"])} for k, v in observation.items()}
        self.action_dim = int(action_dim)
        self.chunk_size = int(chunk_size)
        self.state_keys = sorted(k for k, v in self.observation.items() if not is_image(v))
        self.image_keys = sorted(k for k, v in self.observation.items() if is_image(v))
        self.state_dim = sum(int(np.prod(self.observation[k]["shape"])) for k in self.state_keys)
        self.register_buffer("state_mean", torch.zeros(self.state_dim))
        self.register_buffer("state_std", torch.ones(self.state_dim))
        self.register_buffer("action_mean", torch.zeros(self.action_dim))
        self.register_buffer("action_std", torch.ones(self.action_dim))

    def _state_vector(self, batch: dict[str, Any]) -> np.ndarray | torch.Tensor:
        parts = [batch[f"obs.{k}"].reshape(len(batch[f"obs.{k}"]), -1) for k in self.state_keys]
        if isinstance(parts[0], torch.Tensor):
            return torch.cat([p.float() for p in parts], dim=1)
        return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts], axis=1)

    def fit_normalization(self, batch: dict[str, np.ndarray]) -> None:
        if self.state_keys:
            self.state_mean, self.state_std = mean_std(self._state_vector(batch))
        actions = np.asarray(batch["action"], dtype=np.float64).reshape(-1, self.action_dim)
        self.action_mean, self.action_std = mean_std(actions)

    def normalized_state(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not self.state_keys:
            return None
        return (self._state_vector(batch) - self.state_mean) / self.state_std

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized action chunks, (B, chunk_size, action_dim)."""
        raise NotImplementedError

    @torch.no_grad()
    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        batch = {f"obs.{k}": torch.as_tensor(np.asarray(observation[k]))[None] for k in self.observation}
        chunk = self.predict(batch)[0] * self.action_std + self.action_mean
        return chunk.numpy().astype(np.float32)

    @torch.no_grad()
    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        batch = {
            f"obs.{k}": torch.as_tensor(np.stack([np.asarray(o[k]) for o in observations])) for k in self.observation
        }
        chunks = self.predict(batch) * self.action_std + self.action_mean
        return chunks.numpy().astype(np.float32)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["action"].float().reshape(-1, self.chunk_size, self.action_dim)
        target = (target - self.action_mean) / self.action_std
        return ((self.predict(batch) - target) ** 2).mean(dim=(1, 2))

    def base_config(self) -> dict[str, Any]:
        return {"observation": self.observation, "action_dim": self.action_dim, "chunk_size": self.chunk_size}


class MLPPolicy(NormalizedPolicy):
    type_name: ClassVar[str] = "mlp"

    def __init__(
        self,
        observation: dict[str, dict[str, Any]],
        action_dim: int,
        chunk_size: int = 1,
        hidden: tuple[int, ...] | list[int] = (256, 256),
    ) -> None:
        super().__init__(observation, action_dim, chunk_size)
        if not self.state_keys:
            raise ValueError("MLPPolicy needs at least one non-image observation")
        self.hidden = [int(h) for h in hidden]
        self.net = mlp([self.state_dim, *self.hidden, self.chunk_size * self.action_dim])

    def config_dict(self) -> dict[str, Any]:
        return {**self.base_config(), "hidden": self.hidden}

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.net(self.normalized_state(batch))
        return out.reshape(-1, self.chunk_size, self.action_dim)
