"""Typed configuration: one pydantic base for every config the project reads, and one way to report a bad one.

A config is declared as a ``ConfigModel`` (frozen, strict, unknown keys refused, no NaN or infinity) and read
with ``validate``, which turns pydantic's ``ValidationError`` into a ``ConfigError`` whose text starts with the
path of the offending key, the way the rest of the project names fields: ``observations[1].shape: ...``,
``tasks[0].requires.min_control_hz: ...``. Checks that span fields raise ``invalid(why, *where)`` from a model
validator, so they name the field they are about and not the model that holds it. A config built in code by
keyword (``SACConfig(gamma=2.0)``) is a ``CodeConfig``, which raises the same error under its ``config_name``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, ValidationError, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

# YAML gives lists, which a strict tuple refuses: write every tuple field as Items; its items stay strict.
type Items[T] = Annotated[tuple[T, ...], Strict(False)]
Name = Annotated[str, Field(min_length=1)]

# Branch tags of ``by_shape`` unions: pydantic puts them in an error's location; they are no key of the config.
_ONE, _LIST = "<one>", "<list>"
_SHOWN = 60  # characters of a bad value repeated in an error
_PLAIN = {  # pydantic error types whose text reads better said in the config's own terms
    "missing": "required",
    "extra_forbidden": "unknown key",
    "tuple_type": "should be a list",
    "list_type": "should be a list",
    "dict_type": "should be a mapping",
    "model_type": "should be a mapping",
    "model_attributes_type": "should be a mapping",
}


class ConfigError(ValueError):
    """A bad config; the message starts with the path of the offending key (``where``, below the config's root)."""

    def __init__(self, path: str, why: str, where: tuple[str | int, ...] = ()) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why
        self.where = where


class ConfigModel(BaseModel):
    """The base of every config model: frozen, strict types, unknown keys refused (the error lists the known ones)."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise invalid(f"unknown key; known: {', '.join(cls.model_fields)}", str(key))
        return data


class CodeConfig(ConfigModel):
    """A config built in code by keyword (``SACConfig(gamma=2.0)``): it raises the same ``ConfigError``, under
    ``config_name``. Not for configs read from files: pydantic then passes the file's mapping to this
    ``__init__`` as keywords, which refuses keys that are not strings."""

    config_name: ClassVar[str] = ""  # the prefix of its errors: "sac" -> "sac.gamma: ..."

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise config_error(err, self.config_name) from None


def invalid(why: str, *where: str | int) -> PydanticCustomError:
    """An error a model validator raises about its own field ``where`` (keys and list indices below the model)."""
    return PydanticCustomError("config", "{why}", {"why": why, "where": where})


def by_shape(one: Any, items: Any) -> Any:
    """A field that holds either one value (typed ``one``) or a list (typed ``items``), chosen by the YAML's
    shape, whose errors name the field rather than the branch pydantic tried."""
    return Annotated[
        Annotated[one, Tag(_ONE)] | Annotated[items, Tag(_LIST)],
        Discriminator(lambda value: _LIST if isinstance(value, list | tuple) else _ONE),
    ]


def validate[ModelT: BaseModel](model: type[ModelT], raw: Any, prefix: str = "") -> ModelT:
    """``raw`` as a ``model``; a ``ConfigError`` naming the first bad key, under ``prefix`` (where ``raw`` came
    from, e.g. ``tasks``), otherwise."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise config_error(err, prefix) from None


def config_error(err: ValidationError, prefix: str) -> ConfigError:
    """The first of pydantic's errors (in the order of the fields) as a ``ConfigError`` under ``prefix``."""
    where, why = _located(err.errors(include_url=False)[0])
    return ConfigError(field_path(prefix, where), why, where)


def _located(error: ErrorDetails) -> tuple[tuple[str | int, ...], str]:
    """One pydantic error as (the keys and indices of its field, why it is wrong)."""
    where = tuple(part for part in error["loc"] if part not in (_ONE, _LIST))
    ctx = error.get("ctx") or {}
    inner = ctx.get("error")
    if error["type"] == "config":
        where += ctx["where"]
        why = ctx["why"]
    elif isinstance(inner, ConfigError):  # a nested model's own __init__ already described it
        where += inner.where
        why = inner.why
    elif error["type"] == "value_error":
        why = str(inner)
    elif error["type"] == "literal_error":
        why = f"unknown value {_shown(error['input'])}; expected {ctx['expected']}"
    else:
        message = _PLAIN.get(error["type"]) or error["msg"].removeprefix("Input ")
        why = message[:1].lower() + message[1:]
        if error["type"] not in ("missing", "extra_forbidden"):
            why += f", got {_shown(error['input'])}"
    return where, why


def field_path(prefix: str, where: tuple[str | int, ...]) -> str:
    """``prefix`` and the keys and indices below it as one path: ``tasks[0].requires``; ``<root>`` for none."""
    path = prefix
    for part in where:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "<root>"


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a ``ConfigError`` naming the file when it cannot be read or is not YAML."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(str(path), f"not valid YAML: {err}") from err
    except OSError as err:
        raise ConfigError(str(path), f"cannot read: {err.strerror or err}") from err


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
