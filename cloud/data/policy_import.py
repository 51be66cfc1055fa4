"""Policies from outside the learner: a lab's lerobot ``pretrained_model`` folder or a fleetloop weights file,
checked against a robot's spec and published into the registry as the next version (``fleetloop policy publish``).

A published version carries where it came from in its safetensors metadata (``policies.weights.ORIGIN``), so the
learner can find the newest version a person brought in (``newest_imported``) among the versions it trained itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry, PolicyVersion
from policies.pretrained_dir import load_policy
from policies.spec import PolicySpec
from policies.weights import ORIGIN, policy_to_bytes, read_metadata


def observation_spec(schema: dict) -> dict[str, dict[str, Any]]:
    """A policy's observation spec (name -> shape and dtype) from a dataset's ``obs.*`` columns."""
    return {
        name.removeprefix("obs."): {"shape": list(spec.shape), "dtype": np.dtype(spec.dtype).name}
        for name, spec in schema.items()
        if name.startswith("obs.")
    }


def schema_spec(schema: dict, dataset: str) -> PolicySpec:
    """The spec of the robots that recorded ``dataset`` (its schema): their observations and action size."""
    return PolicySpec(observation_spec(schema), int(np.prod(schema["action"].shape)), f"dataset {dataset}")


def dataset_spec(store: EpisodeStore, dataset: str) -> PolicySpec:
    """``dataset``'s spec; ValueError naming the datasets the store holds when it has no such one."""
    if dataset not in store.datasets():
        held = ", ".join(sorted(store.datasets())) or "none yet"
        raise ValueError(f"the episode store holds no dataset {dataset!r} (it holds: {held})")
    return schema_spec(store.schema(dataset), dataset)


def describe(path: Path) -> str:
    """How a version's note and metadata name what it came from: the folder or file, by absolute path."""
    return str(path.resolve())


def publish_policy(
    registry: PolicyRegistry,
    name: str,
    source: str | Path,
    spec: PolicySpec,
    inputs: dict[str, list[str]] | None = None,
) -> tuple[PolicyVersion, str]:
    """Checks ``source`` against ``spec`` and publishes it as ``name``'s next version: (the version, what it is)."""
    path = Path(source)
    policy = load_policy(path, spec, inputs)
    kind = getattr(policy, "lerobot_type", None)
    what = f"lerobot {kind}" if kind else f"fleetloop {policy.type_name}"
    weights = policy_to_bytes(policy, origin=describe(path))
    version = registry.publish(name, weights, note=f"published from {describe(path)} ({what})")
    return version, what


def newest_imported(registry: PolicyRegistry, name: str) -> int | None:
    """The newest version of ``name`` that was published from outside the learner, or None."""
    for number in reversed(registry.versions(name)):
        if ORIGIN in read_metadata(registry.read_header(name, number)):
            return number
    return None
