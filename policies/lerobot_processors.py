"""What a lerobot processor pipeline's JSON config may name before anything in it is built.

lerobot builds a pipeline step from either ``registry_name`` (a step lerobot registered) or ``class`` (any importable
``module.Class``, imported with importlib). A config that arrives as data (a lab's ``policy_preprocessor.json``, the
metadata of weights from the wire) may name only the steps of ``ALLOWED_STEPS`` that lerobot's own modules registered
(the steps of the policy types fleetloop runs); ``class`` entries are refused. A step that loads a tokenizer names it
by a folder inside the operator's model roots (``policies.model_roots``), and ``trust_remote_code`` is forced off.
A step's ``state_file`` must be a plain ``.safetensors`` file name (no folders): it is read beside the config.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from hal.config import ConfigError
from policies.model_roots import model_folder

# Steps that load nothing but their own state, and the steps that load a tokenizer by the folders their fields name.
PLAIN_STEPS = frozenset(
    {
        "rename_observations_processor",
        "to_batch_processor",
        "device_processor",
        "normalizer_processor",
        "unnormalizer_processor",
        "smolvla_new_line_processor",
        "pi0_new_line_processor",
        "pi05_prepare_state_tokenizer_processor_step",
        "relative_actions_processor",
        "absolute_actions_processor",
    }
)
FOLDER_STEP_FIELDS = {
    "tokenizer_processor": ("tokenizer_name",),
    "action_tokenizer_processor": ("action_tokenizer_name", "paligemma_tokenizer_name"),
}
ALLOWED_STEPS = PLAIN_STEPS | set(FOLDER_STEP_FIELDS)
# A state file lerobot writes is "<pipeline>_step_<i>_<registry name>.safetensors": no folders, no "..".
STATE_FILE = re.compile(r"[A-Za-z0-9_.-]{1,200}\.safetensors")


class ProcessorConfigError(ValueError):
    """A pipeline config that is refused; ``field`` is its path, e.g. ``steps[2].registry_name``."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


def lerobot_step_names() -> set[str]:
    """The registry names of the processor steps lerobot's own modules define (plugins' steps are not among them)."""
    import lerobot.policies.factory  # noqa: F401 (registers the policies' steps)
    import lerobot.processor  # noqa: F401
    from lerobot.processor.pipeline import ProcessorStepRegistry

    return {name for name in ProcessorStepRegistry.list() if _defined_by_lerobot(ProcessorStepRegistry.get(name))}


def _defined_by_lerobot(step_class: type) -> bool:
    return step_class.__module__.split(".", 1)[0] == "lerobot"


def check_processor_config(config: Any) -> list[dict[str, Any]]:
    """The steps of a pipeline config, each checked: a JSON object with a known ``registry_name``, an object
    ``config`` and, where given, a plain ``state_file`` name. ``ProcessorConfigError`` names the first bad field."""
    if not isinstance(config, dict):
        raise ProcessorConfigError("(top level)", f"must be a JSON object, got {type(config).__name__}")
    steps = config.get("steps")
    if not isinstance(steps, list):
        raise ProcessorConfigError("steps", "must be a list of steps")
    known = lerobot_step_names()
    for index, step in enumerate(steps):
        where = f"steps[{index}]"
        if not isinstance(step, dict):
            raise ProcessorConfigError(where, "must be a JSON object")
        name = step.get("registry_name")
        if name is None:
            named = step.get("class", "nothing")
            why = f"names {named!r} by import path; only steps lerobot registered are built (registry_name)"
            raise ProcessorConfigError(f"{where}.class", why)
        if not isinstance(name, str) or name not in known:
            raise ProcessorConfigError(f"{where}.registry_name", f"{name!r} is not a processor step lerobot defines")
        if name not in ALLOWED_STEPS:
            why = f"{name!r} is not among the steps of the policies fleetloop runs: {', '.join(sorted(ALLOWED_STEPS))}"
            raise ProcessorConfigError(f"{where}.registry_name", why)
        _check_step_config(step, name, where)
        state_file = step.get("state_file")
        if state_file is not None and (not isinstance(state_file, str) or not STATE_FILE.fullmatch(state_file)):
            why = f"{state_file!r} must be a plain .safetensors file name beside the config"
            raise ProcessorConfigError(f"{where}.state_file", why)
    return steps


def _check_step_config(step: dict[str, Any], name: str, where: str) -> None:
    """The step's ``config``: a JSON object; tokenizer folders local; ``trust_remote_code`` off (set in ``step``)."""
    config = step.get("config", {})
    if not isinstance(config, dict):
        raise ProcessorConfigError(f"{where}.config", "must be a JSON object")
    if config.get("trust_remote_code", False) is not False:
        why = "must be false: a tokenizer's own code is never run"
        raise ProcessorConfigError(f"{where}.config.trust_remote_code", why)
    for field in FOLDER_STEP_FIELDS.get(name, ()):
        default = _step_default(name, field)
        try:
            model_folder(config.get(field, default), f"{where}.config.{field}")
        except ConfigError as err:
            raise ProcessorConfigError(err.path, err.why) from None
    if name == "action_tokenizer_processor":  # lerobot's default is True
        step["config"] = {**config, "trust_remote_code": False}


def _step_default(name: str, field: str) -> Any:
    from lerobot.processor.pipeline import ProcessorStepRegistry

    for item in dataclasses.fields(ProcessorStepRegistry.get(name)):
        if item.name == field and item.default is not dataclasses.MISSING:
            return item.default
    return None
