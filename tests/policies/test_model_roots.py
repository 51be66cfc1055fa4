"""The operator's model roots: which folders a policy config from data may name (a VLM, a tokenizer)."""

from __future__ import annotations

import os

import pytest

from hal.config import ConfigError
from policies.model_roots import ENV, add_model_roots, allowed_model_roots, model_folder


@pytest.fixture
def no_roots(monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def test_without_roots_every_model_folder_is_refused_saying_how_to_allow_it(no_roots, tmp_path) -> None:
    assert allowed_model_roots() == ()
    with pytest.raises(ConfigError, match=r"^vlm_model_name: .*no model folder is allowed.*--model-root.*" + ENV):
        model_folder(str(tmp_path), "vlm_model_name")


def test_a_folder_inside_a_root_and_the_root_itself_are_allowed(monkeypatch, tmp_path) -> None:
    (tmp_path / "models" / "vlm").mkdir(parents=True)
    monkeypatch.setenv(ENV, f"{tmp_path / 'other'}{os.pathsep}{tmp_path / 'models'}{os.pathsep}")
    (tmp_path / "other").mkdir()
    assert model_folder(str(tmp_path / "models" / "vlm"), "f") == str(tmp_path / "models" / "vlm")
    assert model_folder(str(tmp_path / "models"), "f") == str(tmp_path / "models")
    with pytest.raises(ConfigError, match="lies outside the allowed model roots"):
        model_folder(str(tmp_path / "models-twin"), "f")  # a shared name prefix is not inside
    (tmp_path / "models" / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="is no folder on this machine"):
        model_folder(str(tmp_path / "models" / "weights.bin"), "f")
    with pytest.raises(ConfigError, match="is no folder on this machine by absolute path"):
        model_folder("HuggingFaceTB/SmolVLM2-500M", "f")
    with pytest.raises(ConfigError, match="must name a model folder"):
        model_folder(f"{tmp_path}/models/\x00", "f")


def test_a_root_reached_through_a_symlink_counts_by_its_real_path(monkeypatch, tmp_path) -> None:
    (tmp_path / "real" / "vlm").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    monkeypatch.setenv(ENV, str(tmp_path / "alias"))
    assert allowed_model_roots() == ((tmp_path / "real").resolve(),)
    assert model_folder(str(tmp_path / "real" / "vlm"), "f")


def test_bad_roots_are_named_by_their_flag_or_variable(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(ENV, "models")
    with pytest.raises(ConfigError, match=rf"^{ENV}: 'models' must be an absolute folder"):
        allowed_model_roots()
    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError, match=r"^--model-root: '/nowhere/at/all' is no folder"):
        add_model_roots(["/nowhere/at/all"])


def test_flags_add_to_the_variable_so_started_processes_keep_them(monkeypatch, tmp_path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv(ENV, str(tmp_path / "a"))
    roots = add_model_roots([tmp_path / "b", tmp_path / "a"])
    assert roots == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    assert os.environ[ENV] == os.pathsep.join(str(root) for root in roots)
