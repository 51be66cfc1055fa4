"""Typed configs: a bad value is reported as one ConfigError that starts with the path of its key."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import model_validator

from hal.config import CodeConfig, ConfigError, ConfigModel, Items, Name, by_shape, invalid, read_yaml, validate


class Inner(ConfigModel):
    rate: float = 1.0
    values: Items[float] = ()
    hold: by_shape(Literal["zeros", "last"], Items[float]) = "zeros"

    @model_validator(mode="after")
    def _three_at_most(self) -> Inner:
        if len(self.values) > 3:
            raise invalid("at most 3 values", "values", 3)
        return self


class Outer(ConfigModel):
    name: Name
    inner: Inner = Inner()
    more: Items[Inner] = ()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "name: required"),
        ({"name": ""}, "name: string should have at least 1 character, got ''"),
        ({"name": "a", "inner": {"rat": 1}}, "inner.rat: unknown key; known: rate, values, hold"),
        ({"name": "a", "inner": {1: 1}}, "inner.1: unknown key; known: rate, values, hold"),
        ({"name": "a", "inner": {"rate": "1"}}, "inner.rate: should be a valid number, got '1'"),
        ({"name": "a", "inner": {"rate": True}}, "inner.rate: should be a valid number, got True"),
        ({"name": "a", "inner": {"rate": float("nan")}}, "inner.rate: should be a finite number, got nan"),
        ({"name": "a", "inner": {"values": "1"}}, "inner.values: should be a list, got '1'"),
        ({"name": "a", "inner": {"values": [1, 2, 3, 4]}}, "inner.values[3]: at most 3 values"),
        ({"name": "a", "inner": {"hold": "brake"}}, "inner.hold: unknown value 'brake'; expected 'zeros' or 'last'"),
        ({"name": "a", "inner": {"hold": [0, "x"]}}, "inner.hold[1]: should be a valid number, got 'x'"),
        ({"name": "a", "more": [{}, {"rate": None}]}, "more[1].rate: should be a valid number, got None"),
        ({"name": "a", "inner": []}, "inner: should be a mapping, got []"),
        ([], "<root>: should be a mapping, got []"),
    ],
)
def test_errors_start_with_the_key_path(raw, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(Outer, raw)
    assert str(err.value) == message


def test_a_good_config_is_typed_and_frozen() -> None:
    config = validate(Outer, {"name": "a", "inner": {"rate": 2, "values": [1, 2], "hold": [0.5]}})
    assert config.inner == Inner(rate=2.0, values=(1.0, 2.0), hold=(0.5,))
    with pytest.raises(ValueError):
        config.name = "b"  # type: ignore[misc]


def test_the_prefix_says_where_the_config_came_from() -> None:
    with pytest.raises(ConfigError, match=r"^robot\.yaml\.name: required$"):
        validate(Outer, {}, "robot.yaml")
    with pytest.raises(ConfigError, match=r"^tasks: should be a mapping, got 5$"):
        validate(Outer, 5, "tasks")


def test_read_yaml_names_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        read_yaml(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        read_yaml(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("a: [1, 2]\n")
    assert read_yaml(good) == {"a": [1, 2]}


class Built(CodeConfig):
    config_name = "built"
    rate: float = 1.0
    inner: Inner = Inner()


def test_a_config_built_in_code_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^built\.rate: should be a valid number, got 'fast'$"):
        Built(rate="fast")
    with pytest.raises(ConfigError, match=r"^built\.inner\.values\[3\]: at most 3 values$"):
        Built(inner={"values": [1, 2, 3, 4]})
    assert Built(rate=2).rate == 2.0


class HoldsBuilt(ConfigModel):
    built: Built = Built()


def test_a_code_config_inside_a_file_config_keeps_the_whole_path() -> None:
    with pytest.raises(ConfigError, match=r"^file\.built\.rate: should be a valid number, got 'x'$"):
        validate(HoldsBuilt, {"built": {"rate": "x"}}, "file")
