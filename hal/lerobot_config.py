"""lerobot's own config dataclasses (a ``RobotConfig``, its ``CameraConfig``s, any draccus ``ChoiceRegistry``) read
from a YAML mapping and checked key by key before draccus builds them.

draccus says "Couldn't instantiate class SOFollowerRobotConfig using the given arguments" for a camera without a
height; this says ``cameras.front.height: required``. Dataclasses and choice registries (``type:`` picks the
registered subclass) are walked here; their leaves (strings, numbers, paths, enums and unions of them) are checked
by pydantic in lax mode, converting the way draccus does. What the walk lets through, draccus then decodes; a
check of lerobot's own (a ``__post_init__``) that still fails is reported at the mapping it belongs to.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import pkgutil
import types
import typing
from typing import Any

from pydantic import PydanticSchemaGenerationError, TypeAdapter, ValidationError

from hal.config import ConfigError, config_error, field_path

log = logging.getLogger("fleetloop.lerobot")

Where = tuple[str | int, ...]


def _path(where: Where) -> str:
    return field_path("", where)


def import_registered(base: type) -> None:
    """Imports every module of the package ``base`` lives in (``lerobot.robots`` for ``RobotConfig``): lerobot
    registers a robot, camera or teleoperator type only when the module that defines it is imported."""
    package = importlib.import_module(base.__module__.rpartition(".")[0])
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # an optional SDK may be missing; that type just stays unknown
            log.debug("could not import %s: %s", info.name, exc)


def choice_class(base: type, name: Any, where: Where, what: str) -> type:
    """The subclass of the draccus ChoiceRegistry ``base`` registered as ``name``; ConfigError at ``where`` if none."""
    if not isinstance(name, str) or not name:
        raise ConfigError(_path(where), f"should be the name of a {what} type, got {name!r}", where)
    if name not in base.get_known_choices():
        import_registered(base)
    known = base.get_known_choices()
    if name not in known:
        raise ConfigError(_path(where), f"unknown {what} type {name!r}; known: {sorted(known)}", where)
    return base.get_choice_class(name)


def check_fields(cls: type, raw: Any, where: Where = (), skip: tuple[str, ...] = ()) -> None:
    """``raw`` holds only fields of the dataclass ``cls`` (besides ``skip``), every required one, each well typed."""
    if not isinstance(raw, dict):
        raise ConfigError(_path(where), f"should be a mapping, got {raw!r}", where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields and key not in skip:
            known = ", ".join(sorted(fields))
            raise ConfigError(_path((*where, str(key))), f"unknown key; known: {known}", (*where, str(key)))
    hints = typing.get_type_hints(cls)
    for name, f in fields.items():
        if name in raw:
            check_value(hints[name], raw[name], (*where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_path((*where, name)), "required", (*where, name))


def check_choice(base: type, raw: Any, where: Where, what: str) -> type:
    """A mapping whose ``type`` picks a registered subclass of ``base``, checked against it; returns that class."""
    if not isinstance(raw, dict):
        raise ConfigError(_path(where), f"should be a mapping with a 'type', got {raw!r}", where)
    if "type" not in raw:
        raise ConfigError(
            _path((*where, "type")), f"required: one of {sorted(base.get_known_choices())}", (*where, "type")
        )
    cls = choice_class(base, raw["type"], (*where, "type"), what)
    check_fields(cls, raw, where, skip=("type",))
    decode(cls, {k: v for k, v in raw.items() if k != "type"}, where)  # its own __post_init__ checks, here
    return cls


def _is_choice(tp: Any) -> bool:
    import draccus

    return isinstance(tp, type) and issubclass(tp, draccus.ChoiceRegistry)


def _has_structure(tp: Any) -> bool:
    """Whether a dataclass or a choice registry is anywhere inside ``tp``."""
    if _is_choice(tp) or dataclasses.is_dataclass(tp):
        return True
    return any(_has_structure(arg) for arg in typing.get_args(tp))


def check_value(tp: Any, value: Any, where: Where) -> None:
    """``value`` fits the annotation ``tp``: structures are walked, leaves checked by pydantic."""
    if _is_choice(tp):
        check_choice(tp, value, where, tp.__name__.removesuffix("Config").lower() or "config")
    elif dataclasses.is_dataclass(tp):
        check_fields(tp, value, where)
    elif not _has_structure(tp):
        _check_leaf(tp, value, where)
    elif typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise ConfigError(_path(where), f"should be a mapping, got {value!r}", where)
        for key, item in value.items():
            check_value(typing.get_args(tp)[1], item, (*where, str(key)))
    elif typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if value is not None and len(members) == 1:
            check_value(members[0], value, where)
    # Other shapes of structure (a list of dataclasses, a union of two) are left to draccus.


@functools.cache
def _adapter(tp: Any) -> TypeAdapter | None:
    try:
        return TypeAdapter(tp)
    except PydanticSchemaGenerationError:  # a type pydantic does not know: draccus alone checks it
        return None


def _check_leaf(tp: Any, value: Any, where: Where) -> None:
    members = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if value is None and type(None) in members:
        return
    members = tuple(m for m in members if m is not type(None))
    adapter = _adapter(members[0] if len(members) == 1 else tp)
    if adapter is None:
        return
    try:
        adapter.validate_python(value)
    except ValidationError as err:
        if len(members) > 1:  # pydantic's per-member errors name no key of the config
            kinds = " or ".join(getattr(m, "__name__", str(m)) if isinstance(m, type) else str(m) for m in members)
            raise ConfigError(_path(where), f"should be {kinds}, got {value!r}", where) from None
        raise config_error(err, _path(where)) from None


def decode(cls: type, raw: dict[str, Any], where: Where = ()) -> Any:
    """draccus's decode of ``raw`` into ``cls``; a ConfigError at ``where`` with lerobot's own reason if it fails."""
    import draccus

    try:
        return draccus.decode(cls, raw)
    except Exception as exc:
        raise ConfigError(_path(where), innermost_message(exc), where) from exc


def innermost_message(exc: BaseException) -> str:
    """The message of the exception that started a chain (draccus wraps lerobot's ``__post_init__`` errors)."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return " ".join(str(exc).split()) or type(exc).__name__
