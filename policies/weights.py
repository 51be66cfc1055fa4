"""Policy <-> bytes as safetensors: tensors plus {"type", "config"} metadata. Never pickle, never torch.load."""

from __future__ import annotations

import hashlib
import json

import safetensors.torch
import torch

from policies.base import Policy
from policies.factory import make_policy
from policies.tensor_view import Buffer, read_header

# Metadata key of weights brought in from outside the learner (``fleetloop policy publish``): where they came from.
ORIGIN = "origin"


def policy_to_bytes(policy: Policy, origin: str | None = None) -> bytes:
    """``origin``: where weights the learner did not train came from (kept in the metadata as ``ORIGIN``)."""
    tensors = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
    metadata = {"type": policy.type_name, "config": json.dumps(policy.config_dict(), sort_keys=True)}
    if origin is not None:
        metadata[ORIGIN] = origin
    return safetensors.torch.save(tensors, metadata=metadata)


def read_metadata(data: Buffer) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob, from its header alone (a ValueError when there is none)."""
    header, _ = read_header(data)
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def policy_from_bytes(data: bytes) -> Policy:
    """Rebuilds a policy from ``policy_to_bytes`` output; ValueError on anything that does not fit (a
    ``ConfigError`` naming the field when the config is bad: it is checked before any layer is built)."""
    metadata = read_metadata(data)
    if "type" not in metadata or "config" not in metadata:
        raise ValueError("policy weights lack the 'type' and 'config' metadata")
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"policy config metadata is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError("policy config metadata is not a JSON object")
    try:
        # On the meta device the architecture costs no memory and no random init; the weights replace it.
        with torch.device("meta"):
            policy = make_policy(metadata["type"], config)
    except (TypeError, KeyError, AttributeError) as exc:  # unexpected, missing or malformed config fields
        raise ValueError(f"policy config does not fit type {metadata['type']!r}: {exc}") from exc
    try:
        policy.load_state_dict(safetensors.torch.load(data), strict=True, assign=True)
    except (RuntimeError, safetensors.SafetensorError) as exc:
        raise ValueError(f"policy weights do not match their config: {exc}") from exc
    return policy


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
