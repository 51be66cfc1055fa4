"""``--store URL`` on the commands that read the store or the registry: a registry in a bucket of moto's S3 server
(loopback) is what ``policy`` lists and rolls back; ``export`` looks for the store there and names ``--store`` when
there is none; a URL of another scheme is refused naming the flag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from tests.cloud.test_registry import weights

REPO = Path(__file__).resolve().parents[2]


def fleetloop(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "fleetloop.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_policy_and_export_read_the_registry_and_the_store_at_the_url(s3_url: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    registry = signing_registry(DataLayout(root, shared=s3_url))  # the key in root, the versions in the bucket
    registry.publish("pick", weights(), note="first")
    registry.publish("pick", weights(3))
    assert not (root / "registry").exists()

    rolled = fleetloop("policy", "rollback", "pick", "--root", str(root), "--store", s3_url)
    assert rolled.returncode == 0, rolled.stderr
    listed = fleetloop("policy", "list", "pick", "--root", str(root), "--store", s3_url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\n")[:3] == ["v1: first", "v2", "v3 (latest): rollback to v1"]

    export = fleetloop(
        "export", "--root", str(root), "--store", s3_url, "--dataset", "pick", "--out", str(tmp_path / "x")
    )
    assert export.returncode != 0 and f"--store: no episode store in {s3_url}" in export.stderr, export.stderr
    wrong = fleetloop("export", "--root", str(root), "--store", "gs://bucket/x", "--out", str(tmp_path / "y"))
    assert wrong.returncode == 2 and "--store" in wrong.stderr and "s3://BUCKET/PREFIX" in wrong.stderr
