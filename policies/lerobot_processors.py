"""What a lerobot processor pipeline's JSON config may name before anything in it is built.

lerobot builds a pipeline step from either ``registry_name`` (a step lerobot registered) or ``class`` (any importable
``module.Class``, imported with importlib). A config that arrives as data (a lab's ``policy_preprocessor.json``, the
metadata of weights from the wire) may name only steps that lerobot's own modules registered; ``class`` entries are
refused. A step's ``state_file`` must be a plain ``.safetensors`` file name (no folders): it is read beside the config.
"""

from __future__ import annotations

import re
from typing import Any

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
        if not isinstance(step.get("config", {}), dict):
            raise ProcessorConfigError(f"{where}.config", "must be a JSON object")
        state_file = step.get("state_file")
        if state_file is not None and (not isinstance(state_file, str) or not STATE_FILE.fullmatch(state_file)):
            why = f"{state_file!r} must be a plain .safetensors file name beside the config"
            raise ProcessorConfigError(f"{where}.state_file", why)
    return steps
