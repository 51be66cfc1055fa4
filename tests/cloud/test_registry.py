import hashlib

import pytest

from cloud.registry import PolicyRegistry


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
