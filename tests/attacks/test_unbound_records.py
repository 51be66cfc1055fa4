"""Attacks with a robot credential whose record binds no dataset: one from a devices file written before records
bound datasets, or one `fleetloop devices add robot-1` would make without flags. The real gateway on loopback
(``tests.attacks.test_credentials_bind.LoopbackCloud``), spoken to as a raw client, and the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from cloud.security.devices import DeviceRegistry, hash_token
from protocol import tunnel_pb2 as pb
from protocol.steps import encode_batch
from tests.attacks.test_credentials_bind import PANDA, LoopbackCloud, opened
from tests.e2e.raw_edge import RESOURCE, RawEdge, good_columns

CLI = [sys.executable, "-m", "fleetloop.cli", "devices"]
TOKEN = "flt_" + "legacy" * 8


@pytest.fixture
def legacy_cloud(tmp_path):
    """A cloud whose devices file holds robot-1 as written before records bound datasets (no policies, no
    embodiments): a credential that could record into any dataset."""
    record = {"id": "robot-1", "kind": "robot", "token_sha256": hash_token(TOKEN), "policies": [], "added_unix": 1.0}
    (tmp_path / "devices.json").write_text(json.dumps({"devices": [record]}))
    cloud = LoopbackCloud(tmp_path / "data", DeviceRegistry(tmp_path / "devices.json"))
    yield cloud
    cloud.stop()


def test_a_record_that_binds_no_dataset_records_into_none(legacy_cloud, tmp_path) -> None:
    """My robot's record is from before records bound datasets. I connect as a simulated Panda and stream scripted
    "interventions" into panda_pick_cube, the dataset every Panda's policy trains on."""
    edge = RawEdge(legacy_cloud.target, replace(RESOURCE, id="robot-1"), token=TOKEN)
    try:
        answer = opened(edge)
        assert answer.HasField("error"), "a record naming no dataset was let record into panda_pick_cube"
        assert (answer.error.code, answer.error.field) == ("unauthenticated", "record.embodiments")
        assert "fleetloop devices allow robot-1 --embodiment" in answer.error.message
        edge.outgoing.put(pb.EdgeMessage(steps=encode_batch("robot-1-ep", 0, good_columns(99), batch_id=1)))
        assert not edge.received("ack", 1.0), "its steps were stored"
    finally:
        edge.close()
    assert PANDA not in legacy_cloud.gateway.store.datasets()
    bound = subprocess.run(
        [*CLI, "allow", "robot-1", "--embodiment", PANDA, "--root", str(tmp_path)], capture_output=True, text=True
    )
    assert bound.returncode == 0, bound.stderr
    edge = RawEdge(legacy_cloud.target, replace(RESOURCE, id="robot-1"), token=TOKEN)  # bound: the same token works
    try:
        assert opened(edge).HasField("welcome")
    finally:
        edge.close()


def test_a_record_that_binds_no_dataset_gets_no_reward_classifier(legacy_cloud) -> None:
    """My unbound record may run "any" policy: I ask for another dataset's reward classifier beside my policy, to
    download its weights."""
    edge = RawEdge(legacy_cloud.target, replace(RESOURCE, id="robot-1"), token=TOKEN, outcome_policy="pusht.reward")
    try:
        answer = opened(edge)
        assert answer.HasField("error"), "a record naming no dataset was sent a reward classifier"
        assert answer.error.field == "record.embodiments"
        assert not edge.received("policy", 0.5)
    finally:
        edge.close()


def test_devices_add_without_flags_makes_no_robot_credential_that_records_anywhere(tmp_path) -> None:
    """An admin runs `fleetloop devices add robot-1` without --embodiment or --policy, and I get a token that may
    record into every dataset of the cloud."""
    added = subprocess.run([*CLI, "add", "robot-1", "--root", str(tmp_path)], capture_output=True, text=True)
    assert added.returncode == 2, "a robot credential that binds no dataset was issued"
    assert "embodiment:" in added.stderr and "--embodiment" in added.stderr and "--policy" in added.stderr
    assert not added.stdout.strip(), "a token was printed"
    assert DeviceRegistry(tmp_path / "devices.json").get("robot-1") is None
