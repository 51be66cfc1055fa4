"""What a lerobot policy config may name when it arrives as data (the metadata of weights from the registry or the
wire, a lab's ``config.json``), checked before anything in it is built.

A lerobot config is more than numbers: some fields make lerobot download or read weights and files while it builds
the model (ACT's and diffusion's ImageNet backbone, SmolVLA's VLM, the tokenizers of pi0 and SmolVLA). So:

- only the policy types fleetloop runs (``LEROBOT_TYPES``) are built;
- a pretrained backbone (``NULL_FIELDS``) must be absent or null: its weights travel in the tensors;
- a field that names a model folder (``FOLDER_FIELDS``, default value included) must name a folder inside the
  operator's model roots (``policies.model_roots``), never a hub repo id: nothing is downloaded, no other folder on
  the host is read, and no remote code is trusted;
- provenance fields (``PROVENANCE_FIELDS``) are cleared: nothing reads them while building.

Processor steps have their own allow-list (``policies.lerobot_processors``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hal.config import ConfigError
from policies.lerobot_processors import ProcessorConfigError, check_processor_config
from policies.model_roots import model_folder

LEROBOT_TYPES = ("act", "diffusion", "pi0", "pi05", "smolvla", "tdmpc", "vqbet")
NULL_FIELDS = ("pretrained_backbone_weights",)  # torchvision downloads a named backbone
FOLDER_FIELDS = ("vlm_model_name",)  # SmolVLA reads its VLM's config, tokenizer and processor from here
PROVENANCE_FIELDS = ("repo_id", "pretrained_path", "pretrained_revision")
# The keys of ``LerobotPolicy.config_dict``: what a config from data may hold (no built model, no processors object).
CONFIG_KEYS = (
    "observation",
    "action_dim",
    "lerobot_type",
    "lerobot_config",
    "inputs",
    "environment_state",
    "task",
    "preprocessor",
    "postprocessor",
    "chunk_size",
)


def check_lerobot_type(lerobot_type: Any, where: str) -> str:
    if lerobot_type not in LEROBOT_TYPES:
        raise ConfigError(
            where, f"{lerobot_type!r} is no lerobot policy type fleetloop runs; known: {', '.join(LEROBOT_TYPES)}"
        )
    return lerobot_type


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def check_lerobot_fields(lerobot_type: str, fields: Any, where: str) -> dict[str, Any]:
    """``fields`` (a lerobot config's JSON) made safe to build from, or a ``ConfigError`` naming the field under
    ``where``: backbones null, model folders local, provenance cleared. ``lerobot_type`` must be checked already."""
    import lerobot.policies.factory  # noqa: F401 (registers lerobot's policy config types)
    from lerobot.configs import PreTrainedConfig

    if not isinstance(fields, dict):
        raise ConfigError(where or "(top level)", f"must be a JSON object, got {type(fields).__name__}")
    known = {f.name: f for f in dataclasses.fields(PreTrainedConfig.get_choice_class(lerobot_type))}
    fields = dict(fields)
    for name in NULL_FIELDS:
        if fields.get(name) is not None:
            why = (
                f"{fields[name]!r}: a pretrained backbone is never loaded from a config; its weights are in the tensors"
            )
            raise ConfigError(_at(where, name), why)
        if name in known:
            fields[name] = None
    for name in FOLDER_FIELDS:
        if name in known or name in fields:  # its default counts too: an absent VLM name means lerobot's hub model
            default = known[name].default if name in known else None
            model_folder(fields.get(name, None if default is dataclasses.MISSING else default), _at(where, name))
    for name in PROVENANCE_FIELDS:
        if name in known:
            fields[name] = None
    return fields


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """A ``LerobotPolicy`` config from data, checked whole before anything is built: known keys, a type fleetloop
    runs, its lerobot fields (``check_lerobot_fields``), both pipelines' steps; a ``ConfigError`` names the field."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"lerobot.{unknown[0]}", f"unknown field; known: {', '.join(CONFIG_KEYS)}")
    lerobot_type = check_lerobot_type(config.get("lerobot_type"), "lerobot.lerobot_type")
    fields = check_lerobot_fields(lerobot_type, config.get("lerobot_config") or {}, "lerobot.lerobot_config")
    for side in ("preprocessor", "postprocessor"):
        if config.get(side) is not None:
            try:
                check_processor_config(config[side])
            except ProcessorConfigError as err:
                raise ConfigError(f"lerobot.{side}.{err.field}", err.why) from None
    return {**config, "lerobot_config": fields}
