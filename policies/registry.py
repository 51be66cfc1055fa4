"""Policy types by name: how a safetensors file's metadata becomes a policy again (no pickle)."""

from __future__ import annotations

from typing import Any

from hal.resource import Capabilities
from policies.base import Policy
from policies.cnn import CNNPolicy
from policies.lerobot_policy import LerobotPolicy
from policies.lora import LoraPolicy
from policies.mlp import MLPPolicy
from policies.sac import SACActorPolicy

POLICY_TYPES: dict[str, type[Policy]] = {
    cls.type_name: cls for cls in (MLPPolicy, CNNPolicy, LoraPolicy, SACActorPolicy, LerobotPolicy)
}


def make_policy(type_name: str, config: dict[str, Any]) -> Policy:
    cls = POLICY_TYPES.get(type_name)
    if cls is None:
        raise ValueError(f"unknown policy type {type_name!r}; known: {sorted(POLICY_TYPES)}")
    return cls.from_config(config)


def config_for(capabilities: Capabilities, chunk_size: int = 1, **extra: Any) -> dict[str, Any]:
    """A policy config matching a resource's observations and action (``extra``: architecture options)."""
    if len(capabilities.action.shape) != 1:
        raise ValueError(f"policies take a flat action, got shape {capabilities.action.shape}")
    return {
        "observation": {s.name: {"shape": list(s.shape), "dtype": s.dtype} for s in capabilities.observation},
        "action_dim": int(capabilities.action.shape[0]),
        "chunk_size": chunk_size,
        **extra,
    }
