"""What a robot (or a dataset recorded from one) offers a policy, and whether a policy fits it.

A ``PolicySpec`` is the robot's observations (name -> shape and dtype) and its action size, with a label that
errors use ("robot panda_pick_cube", "dataset pusht"). ``check_policy_fits`` checks a fleetloop policy against it;
``map_inputs`` decides which of the robot's observations feed each input feature of a lerobot policy (and checks
their shapes). A mismatch is a ``SpecMismatch`` that names the feature, e.g.
``observation.state: the policy expects shape [8], robot panda_pick_cube gives [21]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hal.resource import Capabilities
from policies.lerobot_config import VISUAL
from policies.lerobot_policy import OBS_ENV_STATE, OBS_IMAGES_PREFIX, OBS_STATE, is_image


class SpecMismatch(ValueError):
    """A policy that does not fit a robot's observations or action; ``feature`` names where."""

    def __init__(self, feature: str, why: str) -> None:
        super().__init__(f"{feature}: {why}")
        self.feature = feature


@dataclass(frozen=True)
class PolicySpec:
    """A robot's observations {name: {"shape": [...], "dtype": "..."}} and action size; ``label`` names it."""

    observation: Mapping[str, Mapping[str, Any]]
    action_dim: int
    label: str

    @classmethod
    def from_capabilities(cls, capabilities: Capabilities, label: str | None = None) -> PolicySpec:
        if len(capabilities.action.shape) != 1:
            raise ValueError(f"policies take a flat action, the robot's is {list(capabilities.action.shape)}")
        observation = {s.name: {"shape": list(s.shape), "dtype": s.dtype} for s in capabilities.observation}
        return cls(observation, int(capabilities.action.shape[0]), label or f"robot {capabilities.embodiment}")

    @property
    def cameras(self) -> list[str]:
        return sorted(n for n, s in self.observation.items() if is_image(s))

    @property
    def vectors(self) -> list[str]:
        return sorted(n for n, s in self.observation.items() if not is_image(s))

    def size(self, name: str) -> int:
        return int(np.prod(self.observation[name]["shape"]))

    def _listing(self) -> str:
        return ", ".join(sorted(self.observation)) or "none"


def check_action(action_dim: int, spec: PolicySpec) -> None:
    if action_dim != spec.action_dim:
        raise SpecMismatch("action", f"the policy gives {action_dim} values, {spec.label} takes {spec.action_dim}")


def check_policy_fits(observation: Any, action_dim: Any, spec: PolicySpec) -> None:
    """A fleetloop policy's own spec (its config's ``observation`` and ``action_dim``) against ``spec``: every
    observation it reads must be there with its shape, an image where it expects one, and the action sizes equal."""
    if not isinstance(observation, dict) or not isinstance(action_dim, int):
        raise SpecMismatch("(policy)", "its config does not say which observations it reads and what it gives")
    for name, wanted in sorted(observation.items()):
        feature = f"observation.{name}"
        given = spec.observation.get(name)
        if given is None:
            raise SpecMismatch(
                feature, f"the policy reads it, {spec.label} has no such observation ({spec._listing()})"
            )
        if not isinstance(wanted, dict) or "shape" not in wanted or "dtype" not in wanted:
            raise SpecMismatch(feature, "the policy's config gives no shape and dtype for it")
        if list(wanted["shape"]) != list(given["shape"]):
            why = f"the policy expects shape {list(wanted['shape'])}, {spec.label} gives {list(given['shape'])}"
            raise SpecMismatch(feature, why)
        if is_image(wanted) != is_image(given):
            kind = "a camera image" if is_image(wanted) else "a vector"
            raise SpecMismatch(feature, f"the policy expects {kind}, {spec.label} gives {given['dtype']}")
    check_action(action_dim, spec)


def map_inputs(
    features: Mapping[str, tuple[str, tuple[int, ...]]],
    spec: PolicySpec,
    chosen: Mapping[str, list[str]] | None = None,
) -> dict[str, list[str]]:
    """lerobot input feature -> the robot observations that feed it, checked against the feature's shape.

    ``features``: {key: (lerobot feature type name, shape)}. ``chosen`` maps features by hand; otherwise
    ``observation.images.<name>`` takes the camera of that name (or the robot's only camera, when the policy has one
    image input), ``observation.state`` and ``observation.environment_state`` take the robot's vectors in name
    order (as fleetloop's learner feeds them), and ``observation.<name>`` the observation ``<name>``."""
    chosen = dict(chosen or {})
    for key in sorted(set(chosen) - set(features)):
        raise SpecMismatch(key, f"is no input of the policy (its inputs: {', '.join(sorted(features))})")
    images = [key for key, (kind, _) in features.items() if kind == VISUAL]
    inputs = {}
    for key, (kind, shape) in features.items():  # in the policy's order: its state comes first
        names = list(chosen.get(key) or _default_names(key, kind, len(images), spec))
        for name in names:
            if name not in spec.observation:
                raise SpecMismatch(key, f"{spec.label} has no observation {name!r} ({spec._listing()})")
        _check_shape(key, kind, tuple(shape), names, spec)
        inputs[key] = names
    return inputs


def _default_names(key: str, kind: str, n_images: int, spec: PolicySpec) -> list[str]:
    if kind == VISUAL:
        name = key.removeprefix(OBS_IMAGES_PREFIX)
        if name in spec.cameras:
            return [name]
        if n_images == 1 and len(spec.cameras) == 1:
            return spec.cameras
        cameras = ", ".join(spec.cameras) or "none"
        raise SpecMismatch(key, f"{spec.label} has no camera {name!r} (its cameras: {cameras}); map it to one")
    if key in (OBS_STATE, OBS_ENV_STATE):
        if not spec.vectors:
            raise SpecMismatch(key, f"{spec.label} has no state observations ({spec._listing()})")
        return spec.vectors
    name = key.removeprefix("observation.")
    if name not in spec.observation:
        raise SpecMismatch(key, f"{spec.label} has no observation {name!r} ({spec._listing()})")
    return [name]


def _check_shape(key: str, kind: str, shape: tuple[int, ...], names: list[str], spec: PolicySpec) -> None:
    given = [spec.observation[n] for n in names]
    if kind == VISUAL:
        if len(names) != 1 or not is_image(given[0]):
            raise SpecMismatch(key, f"the policy expects one camera image, {spec.label} gives {names} there")
        height, width, channels = given[0]["shape"]
        if list(shape) != [channels, height, width]:
            why = (
                f"the policy expects images {list(shape)} (channels, height, width), "
                f"{spec.label} gives {[channels, height, width]} from {names[0]!r}"
            )
            raise SpecMismatch(key, why)
        return
    images = [n for n, s in zip(names, given, strict=True) if is_image(s)]
    if images:
        raise SpecMismatch(key, f"the policy expects a vector, {spec.label}'s {images[0]!r} is a camera image")
    size = sum(spec.size(n) for n in names)
    if list(shape) != [size]:
        raise SpecMismatch(key, f"the policy expects shape {list(shape)}, {spec.label} gives [{size}]")
