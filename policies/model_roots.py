"""The folders a policy config from data may name a model in (a VLM, a tokenizer): the operator's model roots.

A lerobot config names model folders that lerobot and transformers read files from while building (SmolVLA's
``vlm_model_name``, a tokenizer step's ``tokenizer_name``). Whoever writes a weights file chooses those names, so a
name counts only when its real path (symlinks and ``..`` resolved) lies inside a root the operator allowed where the
process started: ``FLEETLOOP_MODEL_ROOTS`` (folders separated by ``os.pathsep``) and the ``--model-root`` flags of
the commands that build policies. No roots (the default): every model folder is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hal.config import ConfigError

ENV = "FLEETLOOP_MODEL_ROOTS"
HOW = f"allow its folder with --model-root FOLDER or {ENV}"


def _root(text: str, where: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise ConfigError(where, f"{text!r} must be an absolute folder")
    real = path.resolve()
    if not real.is_dir():
        raise ConfigError(where, f"{text!r} is no folder on this machine")
    return real


def allowed_model_roots() -> tuple[Path, ...]:
    """The real paths of the roots in ``FLEETLOOP_MODEL_ROOTS``; a ``ConfigError`` names a bad entry."""
    entries = [entry for entry in os.environ.get(ENV, "").split(os.pathsep) if entry]
    return tuple(_root(entry, ENV) for entry in entries)


def add_model_roots(folders: Iterable[str | Path], where: str = "--model-root") -> tuple[Path, ...]:
    """Adds ``folders`` (the ``--model-root`` flags) to this process's roots and returns them all, checked.

    They go into ``FLEETLOOP_MODEL_ROOTS`` itself so that the processes this one starts (the cloud's learner is
    spawned) keep the same roots. A ``ConfigError`` names the flag or the variable of a root that is not an
    absolute folder."""
    roots = list(allowed_model_roots())
    for folder in folders:
        root = _root(str(folder), where)
        if root not in roots:
            roots.append(root)
    if roots:
        os.environ[ENV] = os.pathsep.join(str(root) for root in roots)
    return tuple(roots)


def model_folder(value: Any, where: str) -> str:
    """``value`` when it names a folder inside an allowed model root; a ``ConfigError`` at ``where`` when it is a hub
    name, a relative path, a folder outside every root (after symlinks and ``..``), or no folder. Nothing inside the
    folder is read here."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(where, f"must name a model folder on this host, got {value!r}")
    if not Path(value).is_absolute():
        why = "is no folder on this machine by absolute path; nothing is downloaded (a hub name is refused)"
        raise ConfigError(where, f"{value!r} {why}")
    roots = allowed_model_roots()
    if not roots:
        raise ConfigError(where, f"{value!r}: no model folder is allowed on this machine; {HOW}")
    try:
        real = Path(value).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, a path too long
        raise ConfigError(where, f"{value!r} cannot be resolved: {err}") from None
    if not any(real.is_relative_to(root) for root in roots):
        shown = ", ".join(str(root) for root in roots)
        raise ConfigError(where, f"{value!r} lies outside the allowed model roots ({shown}); {HOW}")
    if not real.is_dir():
        raise ConfigError(where, f"{value!r} is no folder on this machine")
    return value
