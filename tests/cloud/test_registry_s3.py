"""The policy registry on S3-compatible object storage (moto's real S3 server on loopback): signed versions
published, listed, read back verified (header alone too), rolled back, and seen by another registry object."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.data.blobs import open_blobs
from cloud.data.version_registry import PolicyRegistry
from policies.signing import Signer, UnsignedVersion
from policies.version_digest import PREFIX, digest_matches
from tests.cloud.test_registry import weights


def test_signed_versions_publish_read_verified_and_roll_back_on_object_storage(s3_url: str, tmp_path: Path) -> None:
    url = f"{s3_url}/registry"
    signer = Signer.generate()
    learner = PolicyRegistry(url, signer=signer)
    assert learner.latest("pick") is None and str(learner.root) == url
    one, two = weights(2), weights(3)
    v1 = learner.publish("pick", one)
    v2 = learner.publish("pick", two, note="more data")

    public_key = tmp_path / "learner.pub"  # the key stays on local disk, as certs/learner.pub
    public_key.write_bytes(signer.public_pem())
    gateway = PolicyRegistry(url, public_key=public_key)  # another process's view: only what is in the bucket
    assert gateway.latest("pick") == v2 and gateway.versions("pick") == [1, 2]
    assert gateway.describe("pick", 2).note == "more data"
    stored = gateway.read_verified("pick", 2)
    assert v2.sha256.startswith(PREFIX) and digest_matches(stored, v2.sha256) and v2.size_bytes == len(stored)
    manifest, _ = gateway.verified_header("pick", 1)
    assert manifest.version == 1 and v1.version == 1

    v3 = learner.rollback("pick")
    assert (v3.version, v3.note) == (3, "rollback to v1") and gateway.latest("pick") == v3
    with pytest.raises(ValueError, match="differs only in case"):
        learner.publish("PICK", one)

    blobs = open_blobs(url)  # a file dropped into the bucket is never run
    blobs.put("pick/v000004.safetensors", one)
    with pytest.raises(UnsignedVersion):
        gateway.read_verified("pick", 4)
    with pytest.raises(FileNotFoundError):
        gateway.read("pick", 9)
