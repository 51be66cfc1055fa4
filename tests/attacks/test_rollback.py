"""Attacks on rollback: a file someone else put in the registry folder must not come out of a rollback signed by
the learner's key. A real registry on disk, the learner's real key and the real ``fleetloop policy`` command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.version_registry import PolicyRegistry
from policies.factory import make_policy
from policies.signing import Signer
from policies.weights import policy_to_bytes

CLI = [sys.executable, "-m", "fleetloop.cli", "policy"]


def weights() -> bytes:
    return policy_to_bytes(
        make_policy("mlp", {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2})
    )


def registry_with_a_dropped_v2(layout: DataLayout, dropped: bytes) -> PolicyRegistry:
    """v1 and v3 signed by the learner, v2 written straight into the registry folder by someone else."""
    registry = signing_registry(layout)
    registry.publish("pick", weights())
    PolicyRegistry(layout.registry).publish("pick", dropped)
    registry.publish("pick", weights())
    return registry


def test_rolling_back_to_an_unsigned_file_dropped_into_the_registry_does_not_sign_it(tmp_path) -> None:
    """I can write the registry folder but not read the learner's key: I drop an unsigned v2 and wait for someone
    to roll back to it, so the rollback signs my weights as the learner's next version."""
    layout = DataLayout(tmp_path)
    registry = registry_with_a_dropped_v2(layout, weights())
    with pytest.raises(ValueError, match=r"to_version: v2 of pick .*not signed by this cloud's learner"):
        registry.rollback("pick", to_version=2)
    assert registry.latest("pick").version == 3 and registry.versions("pick") == [1, 2, 3]


def test_rolling_back_to_a_file_signed_by_another_key_does_not_sign_it(tmp_path) -> None:
    """I sign v2 with a key of my own (a manifest that looks right, with my signature) and drop it in."""
    layout = DataLayout(tmp_path)
    registry = registry_with_a_dropped_v2(layout, Signer.generate().sign(weights(), "pick", 2))
    with pytest.raises(ValueError, match=r"to_version: v2 of pick .*another key's"):
        registry.rollback("pick", to_version=2)
    assert registry.versions("pick") == [1, 2, 3]


def test_fleetloop_policy_rollback_refuses_a_dropped_file_and_publishes_nothing(tmp_path) -> None:
    """The operator runs `fleetloop policy rollback pick --to 2` on the version I dropped in."""
    layout = DataLayout(tmp_path)
    registry = registry_with_a_dropped_v2(layout, weights())
    done = subprocess.run(
        [*CLI, "rollback", "pick", "--to", "2", "--root", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "to_version: v2 of pick" in done.stderr and "fleetloop policy sign pick" in done.stderr
    assert registry.latest("pick").version == 3 and registry.versions("pick") == [1, 2, 3]
    registry.rollback("pick", to_version=1)  # a version the learner signed still rolls back
    registry.read_verified("pick", 4)
