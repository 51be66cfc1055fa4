import hashlib

import pytest

from cloud.data.version_registry import PolicyRegistry


def test_versions_are_monotonic_across_reopen(tmp_path) -> None:
    registry = PolicyRegistry(tmp_path)
    assert registry.latest("pick") is None
    assert registry.publish("pick", b"one").version == 1
    v2 = PolicyRegistry(tmp_path).publish("pick", b"two")
    assert v2.version == 2
    assert v2.sha256 == hashlib.sha256(b"two").hexdigest()
    assert registry.latest("pick") == v2
    assert registry.read("pick", 1) == b"one"


def test_refuses_bad_policy_name(tmp_path) -> None:
    with pytest.raises(ValueError, match="policy_name"):
        PolicyRegistry(tmp_path).publish("../escape", b"x")


def test_rollback_republishes_an_earlier_version_as_the_next_one(tmp_path) -> None:
    registry = PolicyRegistry(tmp_path)
    for content in (b"one", b"two", b"bad"):
        registry.publish("pick", content)
    back = registry.rollback("pick")
    assert (back.version, back.note) == (4, "rollback to v2")
    assert registry.read("pick", 4) == b"two" and registry.latest("pick") == back
    assert registry.rollback("pick", to_version=1).version == 5 and registry.read("pick", 5) == b"one"
    assert registry.versions("pick") == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="to_version"):
        registry.rollback("pick", to_version=5)
    with pytest.raises(ValueError, match="policy_name"):
        registry.rollback("place")


def test_policy_rollback_command(tmp_path) -> None:
    import subprocess
    import sys

    registry = PolicyRegistry(tmp_path / "registry")
    registry.publish("pick", b"one")
    registry.publish("pick", b"two")
    cli = [sys.executable, "-m", "fleetloop.cli", "policy"]
    done = subprocess.run([*cli, "rollback", "pick", "--root", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pick v3 published with the weights of v1" in done.stderr
    listed = subprocess.run([*cli, "list", "pick", "--root", str(tmp_path)], capture_output=True, text=True)
    assert "v3 (latest): rollback to v1" in listed.stdout
    bad = subprocess.run(
        [*cli, "rollback", "pick", "--to", "9", "--root", str(tmp_path)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "to_version" in bad.stderr


def test_policy_names_are_whole_and_unique_regardless_of_case(tmp_path) -> None:
    registry = PolicyRegistry(tmp_path)
    registry.publish("panda_pick_cube", b"weights")
    for name, why in (("PANDA_pick_cube", "differs only in case"), ("panda_pick_cube\n", "policy_name")):
        with pytest.raises(ValueError, match=why):
            registry.publish(name, b"other weights")
    assert registry.latest("Panda_Pick_Cube") is None and registry.latest("panda_pick_cube").version == 1
