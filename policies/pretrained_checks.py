"""A lerobot ``pretrained_model`` folder read as hostile input: each file checked before anything in it is built.

``config.json`` through the allow-lists of ``policies.lerobot_trust`` (a type fleetloop runs, no backbone download,
model folders only inside the model roots), the processors through ``policies.lerobot_processors`` (registered
steps only, state files beside them), the statistics against the config's features, ``model.safetensors`` by
safetensors alone (every tensor of the config's model, of its shape, finite). Every refusal is a ``PretrainedError``
naming the file and field. ``LerobotPolicy.from_pretrained_dir`` builds from what these return, never from lerobot's
own loader (which would read the files again, unchecked).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hal.config import ConfigError
from policies.lerobot_config import LOAD_VLM_WEIGHTS, NO_DOWNLOAD, VISUAL, decode_lerobot_config
from policies.lerobot_processors import ProcessorConfigError, check_processor_config
from policies.lerobot_trust import check_lerobot_fields, check_lerobot_type

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


def read_config(folder: Path) -> Any:
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


def read_processors(folder: Path, config: Any) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
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


def load_model(path: Path, policy: nn.Module) -> None:
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
        why = f"lacks {len(missing)} tensors that config.json's {policy.config.type} has, e.g. {', '.join(missing[:3])}"
        raise PretrainedError(MODEL, why)
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        why = f"holds {len(unexpected)} tensors config.json's {policy.config.type} has not, e.g. {unexpected[0]}"
        raise PretrainedError(MODEL, why)
    for name, tensor in sorted(tensors.items()):
        if tuple(tensor.shape) != tuple(expected[name].shape):
            why = f"tensor {name} has shape {list(tensor.shape)}, config.json makes it {list(expected[name].shape)}"
            raise PretrainedError(MODEL, why)
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PretrainedError(MODEL, f"tensor {name} holds NaN or infinite values")
    policy.model.load_state_dict(tensors, strict=True)


def build_checked(
    policy_class: Callable[..., Any],
    folder: Path,
    config: Any,
    observation: dict[str, dict[str, Any]],
    inputs: dict[str, list[str]],
    task: str | None,
) -> Any:
    """``policy_class`` (``LerobotPolicy``) built from ``read_config``'s config and the folder's checked processors,
    its model and processor state loaded from the folder, in eval mode."""
    configs, state = read_processors(folder, config)
    action_dim = int(np.prod(config.action_feature.shape))
    try:
        pipelines = {"preprocessor": configs["pre"], "postprocessor": configs["post"]}
        policy = policy_class(observation, action_dim, config.type, config, inputs=inputs, task=task, **pipelines)
    except Exception as err:  # lerobot's constructors meet hostile values first: refused with lerobot's reason
        raise PretrainedError(CONFIG, f"lerobot cannot build a {config.type} policy from it: {err}") from None
    load_model(folder / MODEL, policy)
    for side, pipeline in (("pre", policy.preprocessor), ("post", policy.postprocessor)):
        try:
            pipeline.load_state_dict(state[side])
        except (KeyError, ValueError, RuntimeError) as err:
            raise PretrainedError(PROCESSORS[side], f"its state files do not fit its steps: {err}") from None
    return policy.eval()
