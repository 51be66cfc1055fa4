"""LoRA around any policy: the base weights stay frozen, training changes only small low-rank adapters.

``LoraPolicy`` wraps another policy type (its type and config travel in the config, so an edge rebuilds
it from a safetensors file alone) and replaces the chosen ``nn.Linear`` layers by ``LoraLinear``:
y = W x + b + (alpha / r) * B A x, with W and b frozen, A random and B zero at the start, so the wrapped
policy acts exactly like the base until it is trained. Only the adapters (and normalization buffers)
change from one version to the next, which is what keeps weight updates small.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from hal.config import ConfigError, Name, invalid, validate
from policies.base import POLICY_TYPES, Policy, PolicyConfig, Width, policy_class

MAX_RANK = 1024


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
    """Replaces every large enough nn.Linear below ``module``; returns how many. Attention modules of torch are
    left whole: ``nn.MultiheadAttention`` reads its projections' weights directly (ACT's and diffusion's
    transformers use it), so their linear layers around them get the adapters."""
    count = 0
    if isinstance(module, nn.MultiheadAttention):
        return 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and min(child.in_features, child.out_features) >= min_features:
            setattr(module, name, LoraLinear(child, rank, alpha))
            count += 1
        elif not isinstance(child, LoraLinear):
            count += _inject(child, rank, alpha, min_features)
    return count


class LoraConfig(PolicyConfig):
    """The wrapped policy (``base_type``, ``base_config``, checked here against that type's own config) and the
    adapters: ``rank``, ``alpha``, ``min_features`` (smaller layers are left as they are, and frozen too: only
    adapters and normalization change)."""

    config_name = "lora"

    base_type: Name
    base_config: dict[str, Any]
    rank: Annotated[int, Field(ge=1, le=MAX_RANK)] = 8
    alpha: float = 16.0
    min_features: Width = 16

    @model_validator(mode="after")
    def _base_fits(self) -> LoraConfig:
        if self.base_type == "lora":
            raise invalid("cannot be lora itself", "base_type")
        base = POLICY_TYPES.get(self.base_type)
        if base is None:
            raise invalid(f"unknown policy type {self.base_type!r}; known: {sorted(POLICY_TYPES)}", "base_type")
        if base.config_type is not None:
            try:
                validate(base.config_type, self.base_config)
            except ConfigError as err:
                raise invalid(err.why, "base_config", *err.where) from None
        return self


class LoraPolicy(Policy):
    type_name: ClassVar[str] = "lora"
    config_type: ClassVar[type[LoraConfig]] = LoraConfig

    def __init__(self, config: LoraConfig) -> None:
        super().__init__()
        self.config = config
        self.inner = policy_class(config.base_type).from_config(config.base_config)
        self.adapted_layers = _inject(self.inner, config.rank, config.alpha, config.min_features)
        if self.adapted_layers == 0:
            why = f"the {config.base_type} policy has no linear layer with >= {config.min_features} features"
            raise ConfigError("lora.min_features", why, ("min_features",))
        for name, parameter in self.inner.named_parameters():
            parameter.requires_grad_("lora_" in name)

    def config_dict(self) -> dict[str, Any]:
        return self.config.as_dict()

    @classmethod
    def around(cls, base: Policy, **adapters: Any) -> LoraPolicy:
        """Adapters (``LoraConfig``'s rank, alpha, min_features) around an existing, e.g. pretrained, policy,
        keeping its weights."""
        policy = cls(LoraConfig(base_type=base.type_name, base_config=base.config_dict(), **adapters))
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
