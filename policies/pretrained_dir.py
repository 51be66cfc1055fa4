"""A lerobot ``pretrained_model`` folder or a fleetloop weights file as a policy for a robot, checked as hostile input.

A folder as lerobot writes it (``PreTrainedPolicy.save_pretrained`` plus the processors lerobot-train saves beside
it): ``config.json``, ``model.safetensors``, ``policy_preprocessor.json`` / ``policy_postprocessor.json`` and their
steps' ``.safetensors`` state (the normalization statistics). Everything in it is checked before it is used, and
every refusal is a ``PretrainedError`` naming the file and field:

- ``config.json``: a JSON object whose ``type`` is a lerobot policy type, decoded into that type's config (unknown
  or malformed fields refused by draccus); ``device`` becomes cpu; nothing may be downloaded (no pretrained
  backbone, a VLA's VLM config from a folder inside the model roots, ``policies.model_roots``);
- the processors: only steps lerobot itself registered (``policies.lerobot_processors``), state files beside the
  config, statistics that fit the config's features;
- ``model.safetensors``: read by safetensors alone (never pickle), every tensor the config's model has, of its shape,
  finite;
- last, the whole policy acts once on a blank observation of the robot.

The robot's observations feed the policy's input features by ``policies.spec.map_inputs``; the checks of each file
live in ``policies.pretrained_checks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from policies.base import Policy
from policies.lerobot_policy import OBS_IMAGES_PREFIX, LerobotPolicy
from policies.pretrained_checks import CONFIG, PretrainedError, build_checked, read_config
from policies.spec import VISUAL, PolicySpec, check_action, check_policy_fits, map_inputs
from policies.weights import policy_from_bytes


def load_policy(path: str | Path, spec: PolicySpec | None = None, inputs: dict[str, list[str]] | None = None) -> Policy:
    """A lerobot ``pretrained_model`` folder or a fleetloop weights file (``policies.weights``) as a policy that
    fits ``spec`` (None: checked on its own). ``inputs``: lerobot input feature -> observation names, by hand."""
    path = Path(path)
    if path.is_dir():
        return load_pretrained_dir(path, spec, inputs)
    if path.is_file():
        if inputs:
            raise PretrainedError(path.name, "a fleetloop weights file names its observations itself: no input map")
        return load_weights_file(path, spec)
    raise PretrainedError(str(path), "no such folder or file")


def load_weights_file(path: Path, spec: PolicySpec | None) -> Policy:
    """A file of ``policies.weights.policy_to_bytes``: a fleetloop policy with its config in the metadata."""
    try:
        policy = policy_from_bytes(path.read_bytes())
    except Exception as err:  # hostile bytes may break any part of a policy's constructor: refused, never a traceback
        raise PretrainedError(path.name, f"not a fleetloop policy file: {err}") from None
    if spec is not None:
        config = policy.config_dict()
        config = config.get("base_config", config)  # a LoRA policy wraps its base's config
        check_policy_fits(config.get("observation"), config.get("action_dim"), spec)
    return policy.eval()


def load_pretrained_dir(
    folder: Path,
    spec: PolicySpec | None = None,
    inputs: dict[str, list[str]] | None = None,
    *,
    observation: dict[str, dict[str, Any]] | None = None,
    task: str | None = None,
) -> LerobotPolicy:
    """The folder's lerobot policy acting on ``spec``'s observations (None: on ``observation``, else on observations
    named after its own features, as ``LerobotPolicy.from_pretrained_dir`` names them); ``task``: a VLA's
    instruction."""
    if not (folder / CONFIG).is_file():
        hint = " (a lerobot checkpoint keeps it in pretrained_model/)" if (folder / "pretrained_model").is_dir() else ""
        raise PretrainedError(CONFIG, f"missing in {folder}: this is no lerobot pretrained_model folder{hint}")
    config = read_config(folder)
    features = {key: (f.type.name, tuple(f.shape)) for key, f in config.input_features.items()}
    if spec is None and observation is not None:
        spec = PolicySpec(observation, int(np.prod(config.action_feature.shape)), "the given observation")
    elif spec is None:
        spec, inputs = _own_spec(features, config.action_feature.shape)
    mapped = map_inputs(features, spec, inputs)
    action_shape = list(config.action_feature.shape)
    if len(action_shape) != 1:
        raise PretrainedError(CONFIG, f"output_features.action: shape {action_shape}; a robot takes a flat action")
    check_action(action_shape[0], spec)
    observed = {name: dict(spec.observation[name]) for names in mapped.values() for name in names}
    policy = build_checked(LerobotPolicy, folder, config, observed, mapped, task)
    _act_once(policy, spec)
    return policy


def _own_spec(
    features: dict[str, tuple[str, tuple[int, ...]]], action_shape: tuple[int, ...]
) -> tuple[PolicySpec, dict[str, list[str]]]:
    """Observations named after the policy's own features (``observation.images.front`` <- "front"), one each."""
    observation, inputs = {}, {}
    for key, (kind, shape) in features.items():
        name = key.removeprefix(OBS_IMAGES_PREFIX).removeprefix("observation.")
        inputs[key] = [name]
        if kind == VISUAL and len(shape) == 3:
            channels, height, width = shape
            observation[name] = {"shape": [height, width, channels], "dtype": "uint8"}
        else:
            observation[name] = {"shape": [int(np.prod(shape))], "dtype": "float32"}
    return PolicySpec(observation, int(np.prod(action_shape)), "its own features"), inputs


def _act_once(policy: LerobotPolicy, spec: PolicySpec) -> None:
    """The policy acts on a blank observation of the robot, as an edge will: any failure is refused here."""
    blank = {name: np.zeros(s["shape"], dtype=s["dtype"]) for name, s in policy.observation.items()}
    policy.eval()
    try:
        chunk = policy.act(blank)
    except Exception as err:  # whatever breaks on the robot would break the same way here
        raise PretrainedError(CONFIG, f"the policy fails on a blank observation of {spec.label}: {err}") from None
    finally:
        policy.reset()
    if chunk.shape[-1] != spec.action_dim or not np.isfinite(chunk).all():
        why = f"the policy's action on a blank observation of {spec.label} is not {spec.action_dim} finite values"
        raise PretrainedError(CONFIG, why)
