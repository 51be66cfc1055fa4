"""lerobot config names fleetloop reads in more than one place, and decoding a lerobot config from its JSON fields."""

from __future__ import annotations

import dataclasses
from typing import Any

# The config field through which lerobot's vision policies download pretrained (ImageNet) backbones.
NO_DOWNLOAD = "pretrained_backbone_weights"
# The config field through which SmolVLA loads its pretrained VLM backbone (from ``vlm_model_name``).
LOAD_VLM_WEIGHTS = "load_vlm_weights"
VISUAL = "VISUAL"  # lerobot's FeatureType name of camera inputs


def decode_lerobot_config(lerobot_type: str, fields: dict[str, Any]) -> Any:
    """A lerobot PreTrainedConfig from its JSON fields (draccus, as lerobot reads config.json)."""
    import draccus
    from lerobot.configs import PreTrainedConfig

    try:
        config_cls = PreTrainedConfig.get_choice_class(lerobot_type)
    except Exception as exc:
        raise ValueError(
            f"unknown lerobot policy type {lerobot_type!r}; known: {sorted(PreTrainedConfig.get_known_choices())}"
        ) from exc
    known = {f.name for f in dataclasses.fields(config_cls)}
    fields = {k: v for k, v in fields.items() if k != "type" and (k != NO_DOWNLOAD or k in known)}
    try:
        return draccus.decode(config_cls, fields)
    except Exception as exc:
        # draccus wraps the config's own check ("Couldn't instantiate class ACTConfig"): the reason names the field.
        reason: BaseException = exc
        while reason.__cause__ is not None:
            reason = reason.__cause__
        raise ValueError(f"{lerobot_type} config: {reason}") from exc
