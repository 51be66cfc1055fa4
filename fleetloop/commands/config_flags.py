"""Config field paths and the flags that set them: a ``ConfigError`` about a field becomes an error that names
the flag, so the command says which flag to fix."""

from __future__ import annotations

from collections.abc import Mapping

from hal.config import ConfigError


def flag_error(err: ConfigError, flags: Mapping[str, str]) -> ValueError:
    """``err`` prefixed with the flag of its field (``flags``: field path -> flag, the longest path that holds the
    error's field wins); ``err`` itself when no flag sets that field."""
    covering = [path for path in flags if _within(err.path, path)]
    if not covering:
        return err
    return ValueError(f"{flags[max(covering, key=len)]}: {err}")


def _within(path: str, field: str) -> bool:
    """Whether ``path`` is ``field`` or below it (``sampler.ratios.online`` is below ``sampler.ratios``)."""
    return path == field or (path.startswith(field) and path[len(field)] in ".[")
