"""LoRA around any policy: the base weights stay frozen, training changes only small low-rank adapters.

``LoraPolicy`` wraps another policy type (its type and config travel in the config, so an edge rebuilds
it from a safetensors file alone) and replaces the chosen ``nn.Linear`` layers by ``LoraLinear``:
y = W x + b + (alpha / r) * B A x, with W and b frozen, A random and B zero at the start, so the wrapped
policy acts exactly like the base until it is trained. Only the adapters (and normalization buffers)
change from one version to the next, which is what keeps weight updates small.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from policies.base import Policy, policy_class


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        if base.weight.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


def _inject(module: nn.Module, rank: int, alpha: float, min_features: int) -> int:
    """Replaces every large enough nn.Linear below ``module``; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and min(child.in_features, child.out_features) >= min_features:
            setattr(module, name, LoraLinear(child, rank, alpha))
            count += 1
        elif not isinstance(child, LoraLinear):
            count += _inject(child, rank, alpha, min_features)
    return count


class LoraPolicy(Policy):
    """Config: ``base_type``, ``base_config``, ``rank``, ``alpha``, ``min_features`` (smaller layers are left as
    they are, and frozen too: only adapters and normalization change)."""

    type_name: ClassVar[str] = "lora"

    def __init__(
        self, base_type: str, base_config: dict[str, Any], rank: int = 8, alpha: float = 16.0, min_features: int = 16
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {rank}")
        if base_type == self.type_name:
            raise ValueError("lora.base_type cannot be lora itself")
        self.base_type, self.base_config = base_type, dict(base_config)
        self.rank, self.alpha, self.min_features = int(rank), float(alpha), int(min_features)
        self.inner = policy_class(base_type).from_config(self.base_config)
        self.adapted_layers = _inject(self.inner, self.rank, self.alpha, self.min_features)
        if self.adapted_layers == 0:
            raise ValueError(f"lora: the {base_type} policy has no linear layer with >= {min_features} features")
        for name, parameter in self.inner.named_parameters():
            parameter.requires_grad_("lora_" in name)

    def config_dict(self) -> dict[str, Any]:
        return {
            "base_type": self.base_type,
            "base_config": self.base_config,
            "rank": self.rank,
            "alpha": self.alpha,
            "min_features": self.min_features,
        }

    @classmethod
    def around(cls, base: Policy, rank: int = 8, alpha: float = 16.0, min_features: int = 16) -> LoraPolicy:
        """Adapters around an existing (e.g. pretrained) policy, keeping its weights."""
        policy = cls(base.type_name, base.config_dict(), rank, alpha, min_features)
        missing, unexpected = policy.inner.load_state_dict(_with_lora_keys(base.state_dict(), policy), strict=False)
        if unexpected or any("lora_" not in key for key in missing):
            raise ValueError(f"lora: base weights do not fit (missing {missing}, unexpected {unexpected})")
        return policy

    def reset(self) -> None:
        self.inner.reset()

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return self.inner.act(observation)

    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        return self.inner.act_batch(observations)

    def fit_normalization(self, batch: dict[str, np.ndarray]) -> None:
        self.inner.fit_normalization(batch)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.inner.loss(batch)


def _with_lora_keys(base_state: dict[str, torch.Tensor], policy: LoraPolicy) -> dict[str, torch.Tensor]:
    """Maps a base policy's keys onto the wrapped one (``layer.weight`` -> ``layer.base.weight``)."""
    wanted = set(policy.inner.state_dict())
    out = {}
    for key, value in base_state.items():
        prefix, _, leaf = key.rpartition(".")
        moved = f"{prefix}.base.{leaf}" if prefix else f"base.{leaf}"
        out[moved if moved in wanted and key not in wanted else key] = value
    return out
