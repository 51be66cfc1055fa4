"""The policy registry: monotonic versions of each policy as safetensors files on disk.

The learner publishes; the gateway watches and pushes each new version to the edges that
run that policy. Files are written to a temporary name and renamed, so a reader sees a
version whole or not at all, and a crash never leaves a half-published version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cloud.data.files import write_atomically
from protocol.limits import case_twin

POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always matched whole


def check_policy_name(policy_name: str) -> str:
    """``policy_name`` when it may name a policy (it names a folder in the registry), else a ValueError."""
    if not POLICY_NAME.fullmatch(policy_name):
        raise ValueError(f"policy_name: {policy_name!r} must be 1-64 letters, digits, '_', '.', '-'")
    return policy_name


@dataclass(frozen=True)
class PolicyVersion:
    policy_name: str
    version: int
    sha256: str
    size_bytes: int
    published_unix: float
    note: str = ""


class PolicyRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, policy_name: str) -> Path:
        """The policy's folder; a ValueError when another policy's name differs from it only in case (on a
        case-insensitive filesystem both would be that one folder): names are unique regardless of case."""
        twin = case_twin(check_policy_name(policy_name), os.listdir(self.root))
        if twin is not None:
            raise ValueError(f"policy_name: {policy_name!r} differs only in case from the policy {twin!r}")
        return self.root / policy_name

    def latest(self, policy_name: str) -> PolicyVersion | None:
        """The newest version; None when there is none (also for a name that differs only in case from another's)."""
        if case_twin(policy_name, os.listdir(self.root)) is not None:
            return None
        try:
            meta = json.loads((self._dir(policy_name) / "latest.json").read_text())
        except FileNotFoundError:
            return None
        return PolicyVersion(**meta)

    def publish(self, policy_name: str, weights: bytes, note: str = "") -> PolicyVersion:
        """Stores the next version; versions only go up, also across restarts."""
        directory = self._dir(policy_name)
        directory.mkdir(parents=True, exist_ok=True)
        current = self.latest(policy_name)
        version = PolicyVersion(
            policy_name=policy_name,
            version=(current.version if current else 0) + 1,
            sha256=hashlib.sha256(weights).hexdigest(),
            size_bytes=len(weights),
            published_unix=time.time(),
            note=note,
        )
        write_atomically(directory / f"v{version.version:06d}.safetensors", weights, fsync_dir=False)
        write_atomically(directory / "latest.json", json.dumps(asdict(version)).encode(), fsync_dir=False)
        return version

    def versions(self, policy_name: str) -> list[int]:
        return sorted(int(p.stem[1:]) for p in self._dir(policy_name).glob("v*.safetensors"))

    def rollback(self, policy_name: str, to_version: int | None = None) -> PolicyVersion:
        """Publishes an earlier version's weights again, as the next version (versions never go backwards,
        so every edge takes it like any update, and the steps it produces are told apart from the bad ones)."""
        latest = self.latest(policy_name)
        if latest is None:
            raise ValueError(f"policy_name: no versions of {policy_name!r}")
        target = latest.version - 1 if to_version is None else to_version
        if not 1 <= target < latest.version:
            raise ValueError(f"to_version: must be between 1 and v{latest.version - 1}, got {target}")
        try:
            weights = self.read(policy_name, target)
        except FileNotFoundError as err:
            raise ValueError(f"to_version: v{target} of {policy_name} is no longer in the registry") from err
        return self.publish(policy_name, weights, note=f"rollback to v{target}")

    def read(self, policy_name: str, version: int) -> bytes:
        return (self._dir(policy_name) / f"v{version:06d}.safetensors").read_bytes()

    def read_header(self, policy_name: str, version: int) -> bytes:
        """The safetensors header alone (8-byte length + JSON), so a reader of a version's metadata (its type and
        config) need not read a large policy's weights."""
        with (self._dir(policy_name) / f"v{version:06d}.safetensors").open("rb") as file:
            length = file.read(8)
            if len(length) < 8:
                return length
            return length + file.read(min(int.from_bytes(length, "little"), 100 * 1024 * 1024))
