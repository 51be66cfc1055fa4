"""`--root` is the cloud's data folder in every command: one layout says what lives where in it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from cloud.data.layout import DataLayout
from cloud.data.store import EpisodeStore
from fleetloop.cli import build_parser
from fleetloop.commands.arg_types import data_folder


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetloop.cli", *args], capture_output=True, text=True, timeout=60)


def test_the_layout_of_a_data_folder(tmp_path) -> None:
    layout = DataLayout(tmp_path)
    assert layout.store == tmp_path / "store" and layout.registry == tmp_path / "registry"
    assert layout.devices == tmp_path / "devices.json" and layout.certs == tmp_path / "certs"
    assert layout.learner_checkpoint == tmp_path / "learner" / "checkpoint"
    assert not layout.has_store() and layout.root_problem() is None
    EpisodeStore(layout.store).close()
    assert layout.has_store()
    assert "is an episode store itself" in DataLayout(layout.store).root_problem()


def test_every_command_reads_root_the_same_way() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    with_root = {}
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if "--root" in action.option_strings:
                with_root[name] = action
    assert set(with_root) == {"cloud", "learner", "policy", "devices", "certs", "export", "import"}
    for name, action in with_root.items():
        assert action.type is data_folder, name
        assert action.default == "fleetloop-data", name
        assert "data folder" in action.help, name


def test_export_and_import_refuse_a_store_given_as_the_data_folder(tmp_path) -> None:
    store = tmp_path / "data" / "store"
    EpisodeStore(store).close()
    exported = run("export", "--root", str(store), "--dataset", "pusht", "--out", str(tmp_path / "out"))
    assert exported.returncode == 2
    expected = f"give the cloud's data folder that holds it as store/ (here {store.parent})"
    assert "--root" in exported.stderr and expected in exported.stderr
    imported = run("import", "--root", str(store), "--from", str(tmp_path / "nowhere"))
    assert imported.returncode == 2 and "is an episode store itself" in imported.stderr
    assert not (store / "store").exists()  # no second store inside the first


def test_export_of_a_data_folder_without_a_store_says_where_it_looked(tmp_path) -> None:
    done = run("export", "--root", str(tmp_path), "--dataset", "pusht", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert f"export: --root: no episode store in {tmp_path} (looked for {Path(tmp_path) / 'store'})" in done.stderr
