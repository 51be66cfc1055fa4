"""Policy updates on the wire: a full snapshot, or a delta with only the tensors that changed.

An update is a safetensors file. Its metadata names the policy (type, config), the update kind
("full" or "delta"), the version it brings, for a delta the version it applies to, the wire dtype
(float32, or bfloat16 to halve the bytes), and ``state_sha256``: a digest over every tensor of the
resulting version as sent (name, dtype, shape, bytes). The edge rebuilds the whole state from what it
holds plus the update and refuses to swap unless that digest matches, so a delta applied to the
wrong base, a lost tensor or a corrupted one never reaches the robot.

A frozen backbone never changes, so after the first snapshot it is never sent again: a LoRA-adapted
model's update carries only its adapters and normalization.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import safetensors.torch
import torch

from policies.base import Policy
from policies.factory import make_policy
from policies.signing import (
    MANIFEST,
    SIGNATURE,
    WIRE_DTYPES,
    Manifest,
    UnsignedVersion,
    on_wire,
    state_digest,
    tensor_digest,
)
from policies.tensor_view import Buffer, HashedBuffer, Layout, LayoutError
from policies.tensor_view import digests as tensor_digests

__all__ = ["WIRE_DTYPES", "state_digest", "tensor_digest"]


class UpdateError(ValueError):
    """An update that cannot be applied; the edge keeps its current policy."""


class DeltaBaseError(UpdateError):
    """A delta that does not fit what the edge holds (its base is gone, or it rebuilt to another digest): a full
    snapshot of the same version may still apply, so the edge asks for one."""


@dataclass(frozen=True)
class VersionTensors:
    """One version of a policy: its type and config, its tensors, and the wire digest of each tensor."""

    version: int
    type_name: str
    config: str
    tensors: dict[str, torch.Tensor] = field(repr=False)
    digests: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class WireState(VersionTensors):
    """One version's tensors as they travel (cast to the wire dtype), with a digest of each."""

    dtypes: dict[str, str] = field(repr=False)  # the dtype each tensor has in the policy
    signed: dict[str, str] = field(default_factory=dict, repr=False)  # the learner's manifest and signature

    @classmethod
    def from_weights(cls, weights: bytes, version: int, wire_dtype: str = "float32") -> WireState:
        """From a registry file (``policy_to_bytes`` output)."""
        if wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"wire_dtype must be one of {sorted(WIRE_DTYPES)}, got {wire_dtype!r}")
        try:
            layout = Layout.parse(weights)
        except LayoutError as exc:
            raise UpdateError(f"weights: {exc}") from exc
        metadata, tensors, dtypes = layout.metadata, {}, {}
        wire_dtype = _signed_for(metadata, wire_dtype)
        for name, tensor in layout.tensors(weights).items():  # views of the registry file's bytes: read only
            dtypes[name] = str(tensor.dtype).removeprefix("torch.")
            tensors[name] = on_wire(tensor, wire_dtype)
        digests = tensor_digests(tensors)
        signed = {key: metadata[key] for key in (MANIFEST, SIGNATURE) if key in metadata}
        return cls(version, metadata.get("type", ""), metadata.get("config", ""), tensors, digests, dtypes, signed)


def _signed_for(metadata: dict[str, str], wire_dtype: str) -> str:
    """``wire_dtype`` when the learner signed the version for it (or did not sign it at all), else float32: a version
    published before any gateway said it sends ``wire_dtype`` carries no digest an edge could check it against."""
    if MANIFEST not in metadata:
        return wire_dtype
    try:
        signed = Manifest.from_json(metadata[MANIFEST]).state_sha256
    except UnsignedVersion:  # refused where the signature is checked
        return wire_dtype
    return wire_dtype if wire_dtype in signed else "float32"


@dataclass(frozen=True)
class Update:
    payload: bytes
    kind: str  # "full" | "delta"
    version: int
    base_version: int
    sent_tensor_bytes: int
    full_tensor_bytes: int


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def delta_names(target: WireState, base: WireState | None, max_delta_fraction: float = 0.5) -> list[str] | None:
    """The tensors a delta from ``base`` to ``target`` would carry, or None when only a full snapshot will do
    (no base, another architecture, or more than ``max_delta_fraction`` of the bytes changed)."""
    if base is None or (base.type_name, base.config) != (target.type_name, target.config):
        return None
    if set(base.digests) != set(target.digests):
        return None
    changed = [name for name in target.tensors if base.digests[name] != target.digests[name]]
    full_bytes = sum(_nbytes(t) for t in target.tensors.values())
    if sum(_nbytes(target.tensors[name]) for name in changed) > max_delta_fraction * full_bytes:
        return None
    return changed


def build_update(target: WireState, base: WireState | None = None, max_delta_fraction: float = 0.5) -> Update:
    """A delta against ``base`` when that is possible and worth it, else a full snapshot."""
    full_bytes = sum(_nbytes(t) for t in target.tensors.values())
    changed = delta_names(target, base, max_delta_fraction)
    names, kind = (list(target.tensors), "full") if changed is None else (changed, "delta")
    sent = {name: target.tensors[name].contiguous() for name in names}
    metadata = {
        "type": target.type_name,
        "config": target.config,
        "update": kind,
        "version": str(target.version),
        "base_version": str(base.version if kind == "delta" else 0),
        "state_sha256": state_digest(target.digests),
        "dtypes": json.dumps({name: target.dtypes[name] for name in sent}, sort_keys=True),
        **target.signed,  # the learner's word for the version this update rebuilds, checked by the edge
    }
    return Update(
        payload=safetensors.torch.save(sent, metadata=metadata),
        kind=kind,
        version=target.version,
        base_version=int(metadata["base_version"]),
        sent_tensor_bytes=sum(_nbytes(t) for t in sent.values()),
        full_tensor_bytes=full_bytes,
    )


@dataclass(frozen=True)
class HeldState(VersionTensors):
    """What an edge holds of a version it loaded: the policy's tensors and the wire digest of each."""


def _cast_back(received: dict[str, torch.Tensor], dtypes: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in received.items():
        dtype = getattr(torch, dtypes.get(name, str(tensor.dtype).removeprefix("torch.")), None)
        if not isinstance(dtype, torch.dtype):
            raise UpdateError(f"update.dtypes[{name}]: unknown dtype {dtypes.get(name)!r}")
        out[name] = tensor.to(dtype)
    return out


def apply_update(payload: Buffer, held: dict[int, HeldState] | None = None) -> tuple[Policy, HeldState]:
    """Rebuilds the policy an update brings, on top of the versions the edge holds; UpdateError if it does not fit.

    A plain ``policy_to_bytes`` file (no update metadata) is taken as a full snapshot without a state digest.
    """
    # The tensors view the payload's bytes (a bytearray is kept, not copied: a large model is not held twice).
    buffer = payload if isinstance(payload, bytearray) else bytearray(payload)
    try:
        layout = Layout.parse(buffer)
    except LayoutError as exc:
        raise UpdateError(f"update: not a safetensors file ({exc})") from exc
    metadata, received = layout.metadata, layout.tensors(buffer)
    kind = metadata.get("update", "full")
    type_name, config = metadata.get("type", ""), metadata.get("config", "")
    try:
        # Signed (the tunnel checked the signature before handing the bytes on): the learner's dtypes and digests.
        manifest = Manifest.from_json(metadata[MANIFEST]) if MANIFEST in metadata else None
        dtypes = manifest.dtypes if manifest is not None else json.loads(metadata.get("dtypes", "{}"))
        version, base_version = int(metadata.get("version", 0)), int(metadata.get("base_version", 0))
    except (ValueError, TypeError) as exc:
        raise UpdateError(f"update metadata is malformed: {exc}") from exc
    # Hashed as it arrived (the tunnel's receiving side), else here.
    hashed = payload.digests if isinstance(payload, HashedBuffer) else None
    digests = hashed if hashed is not None and set(hashed) == set(received) else tensor_digests(received)
    tensors = _cast_back(received, dtypes)
    if kind == "delta":
        base = (held or {}).get(base_version)
        if base is None:
            raise DeltaBaseError(f"update.base_version: a delta against v{base_version}, which this edge does not hold")
        if (base.type_name, base.config) != (type_name, config):
            raise DeltaBaseError("update.config: a delta for another architecture than the held version's")
        tensors = {**base.tensors, **tensors}
        digests = {**base.digests, **digests}
    elif kind != "full":
        raise UpdateError(f"update.update: must be 'full' or 'delta', got {kind!r}")
    if manifest is not None:
        try:
            manifest.check_state(digests)
        except UnsignedVersion as err:
            raise (DeltaBaseError if kind == "delta" else UpdateError)(str(err)) from None
    expected = metadata.get("state_sha256")
    if expected is not None and state_digest(digests) != expected:
        error = DeltaBaseError if kind == "delta" else UpdateError
        raise error(f"update.state_sha256: the rebuilt v{version} does not match its digest")
    try:
        with torch.device("meta"):
            policy = make_policy(type_name, json.loads(config))
        policy.load_state_dict(tensors, strict=True, assign=True)
    except (TypeError, KeyError, AttributeError, RuntimeError, json.JSONDecodeError, ValueError) as exc:
        raise UpdateError(f"update: the weights do not fit their config ({exc})") from exc
    return policy, HeldState(version, type_name, config, tensors, digests)
