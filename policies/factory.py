"""Policy types by name: how a safetensors file's metadata becomes a policy again (no pickle)."""

from __future__ import annotations

from typing import Any

from hal.resource import Capabilities
from policies import cnn, lerobot_policy, lora, mlp, reward_classifier, sac_actor  # noqa: F401  (each registers its type)
from policies.base import POLICY_TYPES, Policy, policy_class

__all__ = ["POLICY_TYPES", "config_for", "cpu_copy", "make_policy"]


def make_policy(type_name: str, config: dict[str, Any]) -> Policy:
    return policy_class(type_name).from_config(config)


def cpu_copy(policy: Policy) -> Policy:
    """A policy of the same type and config, built on the CPU, holding copies of ``policy``'s weights."""
    copy = make_policy(policy.type_name, policy.config_dict())
    copy.load_state_dict({k: v.detach().cpu() for k, v in policy.state_dict().items()})
    return copy


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
