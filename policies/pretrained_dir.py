"""A lerobot ``pretrained_model`` folder or a fleetloop weights file as a policy for a robot, checked as hostile input.

A folder as lerobot writes it (``PreTrainedPolicy.save_pretrained`` plus the processors lerobot-train saves beside
it): ``config.json``, ``model.safetensors``, ``policy_preprocessor.json`` / ``policy_postprocessor.json`` and their
steps' ``.safetensors`` state (the normalization statistics). Everything in it is checked before it is used, and
every refusal is a ``PretrainedError`` naming the file and field:

- ``config.json``: a JSON object whose ``type`` is a lerobot policy type, decoded into that type's config (unknown
  or malformed fields refused by draccus); ``device`` becomes cpu; nothing may be downloaded (no pretrained
  backbone, a VLA's VLM config from a local folder);
- the processors: only steps lerobot itself registered (``policies.lerobot_processors``), state files beside the
  config, statistics that fit the config's features;
- ``model.safetensors``: read by safetensors alone (never pickle), every tensor the config's model has, of its shape,
  finite;
- last, the whole policy acts once on a blank observation of the robot.

The robot's observations feed the policy's input features by ``policies.spec.map_inputs``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hal.config import ConfigError
from policies.base import Policy
from policies.lerobot_policy import (
    LOAD_VLM_WEIGHTS,
    NO_DOWNLOAD,
    OBS_IMAGES_PREFIX,
    LerobotPolicy,
    decode_lerobot_config,
)
from policies.lerobot_processors import ProcessorConfigError, check_processor_config
from policies.lerobot_trust import check_lerobot_fields, check_lerobot_type
from policies.spec import VISUAL, PolicySpec, check_action, check_policy_fits, map_inputs
from policies.weights import policy_from_bytes

CONFIG = "config.json"
MODEL = "model.safetensors"
PROCESSORS = {"pre": "policy_preprocessor.json", "post": "policy_postprocessor.json"}
MAX_JSON_BYTES = 16 << 20  # a config larger than this is no config
NORMALIZERS = ("normalizer_processor", "unnormalizer_processor")  # steps whose state is statistics per feature


class PretrainedError(ValueError):
    """A refused policy file or folder: ``file`` is the file at fault, the message says which field and why."""

    def __init__(self, file: str, why: str) -> None:
        super().__init__(f"{file}: {why}")
        self.file = file


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
    config = _read_config(folder)
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
    configs, state = _read_processors(folder, config)
    try:
        pipelines = {"preprocessor": configs["pre"], "postprocessor": configs["post"]}
        policy = LerobotPolicy(observed, action_shape[0], config.type, config, inputs=mapped, task=task, **pipelines)
    except Exception as err:  # lerobot's constructors meet hostile values first: refused with lerobot's reason
        raise PretrainedError(CONFIG, f"lerobot cannot build a {config.type} policy from it: {err}") from None
    _load_model(folder / MODEL, policy)
    for side, pipeline in (("pre", policy.preprocessor), ("post", policy.postprocessor)):
        try:
            pipeline.load_state_dict(state[side])
        except (KeyError, ValueError, RuntimeError) as err:
            raise PretrainedError(PROCESSORS[side], f"its state files do not fit its steps: {err}") from None
    _act_once(policy, spec)
    return policy


def _read_json(path: Path) -> Any:
    name = path.name
    if not path.is_file():
        raise PretrainedError(name, "missing: lerobot writes it beside config.json (the policy's normalization)")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise PretrainedError(name, f"larger than {MAX_JSON_BYTES >> 20} MB: no JSON config is that big")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PretrainedError(name, f"not JSON: {err}") from None


def _read_config(folder: Path) -> Any:
    """config.json as the lerobot config of its type, for the CPU, with nothing to download."""
    fields = _read_json(folder / CONFIG)
    if not isinstance(fields, dict):
        raise PretrainedError(CONFIG, f"must be a JSON object, got {type(fields).__name__}")
    lerobot_type = fields.get("type")
    # Its backbone's weights are in model.safetensors: never downloaded. A VLA's VLM config must be local.
    fields = {**fields, "device": "cpu", NO_DOWNLOAD: None}
    if LOAD_VLM_WEIGHTS in fields:
        fields[LOAD_VLM_WEIGHTS] = False
    try:
        check_lerobot_type(lerobot_type, "type")
        fields = check_lerobot_fields(lerobot_type, fields, "")
    except ConfigError as err:
        raise PretrainedError(CONFIG, str(err)) from None
    try:
        config = decode_lerobot_config(lerobot_type, fields)
    except ValueError as err:
        raise PretrainedError(CONFIG, str(err)) from None
    if not config.input_features:
        raise PretrainedError(CONFIG, "input_features: none given; the policy must say what it observes")
    if config.action_feature is None:
        raise PretrainedError(CONFIG, "output_features: no 'action' feature")
    return config


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


def _read_processors(folder: Path, config: Any) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
    """Both pipeline configs (checked, on the CPU) and their steps' state by state key, read from the folder."""
    import safetensors.torch

    configs: dict[str, dict] = {}
    state: dict[str, dict[str, dict]] = {}
    for side, file in PROCESSORS.items():
        pipeline = _read_json(folder / file)
        try:
            steps = check_processor_config(pipeline)
        except ProcessorConfigError as err:
            raise PretrainedError(file, str(err)) from None
        state[side] = {}
        for index, step in enumerate(steps):
            if step["registry_name"] == "device_processor":
                step["config"] = {**step.get("config", {}), "device": "cpu"}
            _check_step(file, index, step)
            name = step.get("state_file")
            if name is None:
                continue
            if not (folder / name).is_file():
                raise PretrainedError(file, f"steps[{index}].state_file: {name} is missing beside it")
            try:
                tensors = safetensors.torch.load_file(folder / name)
            except Exception as err:  # safetensors' own error for any malformed file
                raise PretrainedError(name, f"not a safetensors file: {err}") from None
            if step["registry_name"] in NORMALIZERS:
                _check_statistics(name, tensors, config)
            state[side][name.removesuffix(".safetensors")] = tensors
        configs[side] = pipeline
    return configs, state


def _check_step(file: str, index: int, step: dict[str, Any]) -> None:
    """Builds the step alone with its config, so a bad field is named with its file and step."""
    from lerobot.processor.pipeline import ProcessorStepRegistry

    name = step["registry_name"]
    try:
        ProcessorStepRegistry.get(name)(**step.get("config", {}))
    except Exception as err:  # the step's own constructor judges its fields
        raise PretrainedError(file, f"steps[{index}] ({name}).config: {err}") from None


def _check_statistics(file: str, tensors: dict[str, torch.Tensor], config: Any) -> None:
    """Normalization statistics (``<feature>.<stat>``) must be finite and sized for the config's feature."""
    features = {**config.input_features, **config.output_features}
    for key, tensor in sorted(tensors.items()):
        feature, _, stat = key.rpartition(".")
        if not torch.isfinite(tensor.float()).all():
            raise PretrainedError(file, f"{key} holds NaN or infinite values")
        if feature not in features:
            continue  # statistics of a feature the policy does not use are never read
        shape = tuple(features[feature].shape)
        sizes = {int(np.prod(shape))} | ({shape[0]} if features[feature].type.name == VISUAL else set())
        if tensor.numel() not in sizes:
            why = f"{feature} {stat} has {tensor.numel()} values, config.json's {feature} has shape {list(shape)}"
            raise PretrainedError(file, why)


def _load_model(path: Path, policy: LerobotPolicy) -> None:
    """model.safetensors into the built model: every tensor present, of its shape, finite (read by safetensors)."""
    import safetensors.torch

    if not path.is_file():
        raise PretrainedError(MODEL, "missing: the policy's weights (lerobot's save_pretrained writes them)")
    try:
        tensors = safetensors.torch.load_file(path)
    except Exception as err:  # safetensors' own error for any malformed file
        raise PretrainedError(MODEL, f"not a safetensors file: {err}") from None
    expected = policy.model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        why = (
            f"lacks {len(missing)} tensors that config.json's {policy.lerobot_type} has, e.g. {', '.join(missing[:3])}"
        )
        raise PretrainedError(MODEL, why)
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        why = f"holds {len(unexpected)} tensors config.json's {policy.lerobot_type} has not, e.g. {unexpected[0]}"
        raise PretrainedError(MODEL, why)
    for name, tensor in sorted(tensors.items()):
        if tuple(tensor.shape) != tuple(expected[name].shape):
            why = f"tensor {name} has shape {list(tensor.shape)}, config.json makes it {list(expected[name].shape)}"
            raise PretrainedError(MODEL, why)
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PretrainedError(MODEL, f"tensor {name} holds NaN or infinite values")
    policy.model.load_state_dict(tensors, strict=True)


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
