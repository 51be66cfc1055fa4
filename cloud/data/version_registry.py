"""The policy registry: monotonic versions of each policy as safetensors files, in a folder or on object storage.

The learner publishes; the gateway watches and pushes each new version to the edges that
run that policy. Files are written to a temporary name and renamed, so a reader sees a
version whole or not at all, and a crash never leaves a half-published version. On object storage
(``s3://bucket/prefix``, cloud/data/blobs.py) every PUT is atomic and durable once acknowledged.

A registry with the learner's key (``signer``) signs each version it publishes (``policies.signing``); readers
that build policies from it (the gateway's pushes, remote inference, openpi) take versions through ``read_verified``
and ``verified_header``, which refuse a file the learner did not sign: whoever can write this folder cannot get a
version run. The public key is the signer's, or read from ``public_key`` (a file beside the cloud's certificates)
once it exists. Every version is signed for float32 on the wire; for bfloat16 too once a gateway said it sends
that (``sends_in``): the bf16 digests cost a cast and a hash of the whole model.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cloud.data.blobs import LocalBlobs, open_blobs
from cloud.data.files import body_first, drop_cached, temporary_path
from policies.signing import WIRE_DTYPES, Manifest, Signer, UnsignedVersion, Verifier
from policies.tensor_view import Layout, LayoutError
from policies.version_digest import digest_of, version_digest
from policies.weights import read_metadata
from protocol.limits import case_twin

log = logging.getLogger("fleetloop.registry")
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
    sha256: str  # policies.version_digest ("tensors-sha256:..."; a plain sha256 of the file in older records)
    size_bytes: int
    published_unix: float
    note: str = ""


@dataclass(frozen=True)
class Publishing:
    """A version whose file is being written now (a hint ``publish`` leaves, so a gateway can send it as it grows)."""

    version: int
    size_bytes: int
    path: Path  # the file as it grows, renamed to ``PolicyRegistry.path`` once whole and fsynced


PUBLISHING = "publishing.json"
WIRE = "@wire-dtypes.json"  # in the registry's root; no policy's name starts with "@"


class PolicyRegistry:
    def __init__(self, root: str | Path, signer: Signer | None = None, public_key: str | Path | None = None) -> None:
        self._blobs = open_blobs(root)
        self.root: Path | str = self._blobs.root if isinstance(self._blobs, LocalBlobs) else self._blobs.where
        if isinstance(self.root, Path):
            self.root.mkdir(parents=True, exist_ok=True)
        self.signer = signer
        self.public_key = Path(public_key) if public_key is not None else None
        self._verifier: Verifier | None = signer
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Calls ``listener`` (on the publishing thread; it must not block) once a publish through this object left
        its hint and once it recorded the version: a gateway in the learner's process need not wait for its next
        look. Publishes from other processes are only seen by looking. Returns what stops the calls."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener's failure is no failed publish: it looks again soon anyway
                log.exception("a registry listener failed")

    @property
    def verifier(self) -> Verifier | None:
        """The learner's public key, once there is one (a learner elsewhere makes it on its first start)."""
        if self._verifier is None and self.public_key is not None and self.public_key.is_file():
            self._verifier = Verifier.from_file(self.public_key)
        return self._verifier

    def _checker(self) -> Verifier:
        verifier = self.verifier
        if verifier is None:
            where = f" (none at {self.public_key})" if self.public_key else ""
            raise UnsignedVersion(f"no learner key to check versions against{where}: run `fleetloop certs init`")
        return verifier

    def verified_header(self, policy_name: str, version: int) -> tuple[Manifest, dict[str, str]]:
        """A version's signed manifest and its header's metadata, from the header alone; ``UnsignedVersion``
        (a ValueError) for a file the learner did not sign."""
        metadata = read_metadata(self.read_header(policy_name, version))
        return self._checker().manifest(metadata, policy_name, version), metadata

    def read_verified(self, policy_name: str, version: int) -> bytes:
        """A version's file, its header and tensors checked against the learner's signature."""
        weights = self.read(policy_name, version)
        self.check(weights, policy_name, version)
        return weights

    def check(self, weights: bytes, policy_name: str, version: int) -> None:
        """``UnsignedVersion`` unless ``weights`` (a file read with ``read``) are the version the learner signed."""
        self._checker().check_file(weights, policy_name, version)

    def wire_dtypes(self) -> tuple[str, ...]:
        """The dtypes float weights travel in from some gateway on this registry, float32 always: what
        ``publish`` signs each version for."""
        try:
            said = json.loads(self._blobs.get(WIRE) or b"[]")
        except ValueError:  # not one we wrote: float32 is always signed, and a gateway sends float32 when unsigned
            said = []
        extra = (
            [wire for wire in said if isinstance(wire, str) and wire in WIRE_DTYPES] if isinstance(said, list) else []
        )
        return tuple(sorted({"float32", *extra}))

    def sends_in(self, wire_dtype: str) -> None:
        """A gateway says it sends float weights as ``wire_dtype``: versions published from now on are signed for
        it too (one published before travels as float32: ``policies.updates.WireState``)."""
        if wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"wire_dtype: must be one of {sorted(WIRE_DTYPES)}, got {wire_dtype!r}")
        known = self.wire_dtypes()
        if wire_dtype not in known:
            self._blobs.put(WIRE, json.dumps(sorted({*known, wire_dtype})).encode())

    def _dir(self, policy_name: str) -> str:
        """The policy's folder (a key prefix); a ValueError when another policy's name differs from it only in case
        (on a case-insensitive filesystem both would be that one folder): names are unique regardless of case."""
        twin = case_twin(check_policy_name(policy_name), self._blobs.children(""))
        if twin is not None:
            raise ValueError(f"policy_name: {policy_name!r} differs only in case from the policy {twin!r}")
        return policy_name

    def latest(self, policy_name: str) -> PolicyVersion | None:
        """The newest version; None when there is none (also for a name that differs only in case from another's)."""
        if case_twin(policy_name, self._blobs.children("")) is not None:
            return None
        meta = self._blobs.get(f"{self._dir(policy_name)}/latest.json")
        return None if meta is None else PolicyVersion(**json.loads(meta))

    def publish(self, policy_name: str, weights: bytes, note: str = "") -> PolicyVersion:
        """Stores the next version; versions only go up, also across restarts."""
        directory = self._dir(policy_name)
        current = self.latest(policy_name)
        number = (current.version if current else 0) + 1
        if self.local and number > 2:  # the one before last leaves the page cache: this one is written into it
            drop_cached(self.path(policy_name, number - 2))
        if self.signer is not None and self.local:
            sha256, size_bytes = self._write_signed(policy_name, number, weights, self.signer)
        else:
            sha256, size_bytes = self._write(policy_name, number, weights)
        version = PolicyVersion(
            policy_name=policy_name,
            version=number,
            sha256=sha256,
            size_bytes=size_bytes,
            published_unix=time.time(),
            note=note,
        )
        record = json.dumps(asdict(version)).encode()
        self._blobs.put(f"{directory}/v{version.version:06d}.json", record, sync_folder=False)  # its note, kept
        # One fsync of the policy's folder makes the three renames above durable at once (the version's file, its
        # record, latest.json): a version an edge may apply survives a power loss, not only a killed process.
        self._blobs.put(f"{directory}/latest.json", record)
        self._changed()
        return version

    def _write(self, policy_name: str, number: int, weights: bytes) -> tuple[str, int]:
        """Writes a version's file in order: on object storage, or unsigned (its digest taken meanwhile: hashlib lets
        go of the GIL). Returns its digest (``policies.version_digest``) and size."""
        if self.signer is not None:  # the signed header, then the data section as it is (not copied)
            header, data_start, digests = self.signer.signed_header(weights, policy_name, number, self.wire_dtypes())
            parts: tuple[bytes | memoryview, ...] = (header, memoryview(weights)[data_start:])
            digest = version_digest(header, digests)
        else:
            parts, digest = (weights,), ""
        size_bytes = sum(len(part) for part in parts)
        self._hint(policy_name, number, size_bytes)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish-digest") as pool:
            unsigned = pool.submit(digest_of, weights) if self.signer is None else None
            self._blobs.put(f"{self._dir(policy_name)}/v{number:06d}.safetensors", parts, sync_folder=False)
        return (digest if unsigned is None else unsigned.result()), size_bytes

    def _write_signed(self, policy_name: str, number: int, weights: bytes, signer: Signer) -> tuple[str, int]:
        """Writes a signed version's file on this disk: its data section lands while the tensors are hashed for the
        signature, the signed header in front of it once made; then the hint (a gateway follows the file from its
        start, most of it written already). Its digest comes from the header and the signature's tensor digests: no
        second pass over the data. Returns the digest and size."""
        wires = self.wire_dtypes()
        head_bytes = signer.signed_header_bytes(weights, policy_name, number, wires)
        try:
            data = memoryview(weights)[Layout.parse(weights).header_bytes :]
        except LayoutError as err:
            raise ValueError(f"weights: {err}") from None
        path = self.path(policy_name, number)
        path.parent.mkdir(parents=True, exist_ok=True)
        with body_first(path, head_bytes, (data,)) as write_head:
            header, _, digests = signer.signed_header(weights, policy_name, number, wires)
            write_head(header)
            self._hint(policy_name, number, len(header) + len(data))
        return version_digest(header, digests), len(header) + len(data)

    def _hint(self, policy_name: str, number: int, size_bytes: int) -> None:
        """Says which file ``number`` is being written to, so a gateway on this disk may send it as it grows (object
        storage has no such file)."""
        if self.local:
            temporary = temporary_path(self.path(policy_name, number)).name
            hint = {"version": number, "size_bytes": size_bytes, "file": temporary}
            self._blobs.put(
                f"{policy_name}/{PUBLISHING}", json.dumps(hint).encode(), sync_file=False, sync_folder=False
            )
            self._changed()

    def publishing(self, policy_name: str) -> Publishing | None:
        """The version of ``policy_name`` being published now, if one is (its record not written yet); a hint: the
        file may stop growing (its writer died), and only a recorded version is published. None on object storage."""
        if not self.local:
            return None
        folder = self.root / self._dir(policy_name)
        try:
            hint = json.loads((folder / PUBLISHING).read_bytes())  # renamed into place: whole
            found = Publishing(int(hint["version"]), int(hint["size_bytes"]), folder / hint["file"])
        except (TypeError, KeyError, ValueError, OSError):  # none, or not a hint publish wrote
            return None
        latest = self.latest(policy_name)
        following = found.version == (latest.version if latest else 0) + 1
        return found if following and found.path.parent == folder and found.size_bytes > 0 else None

    @property
    def local(self) -> bool:
        """Whether versions are files on this machine's disk (``path``), not objects on object storage."""
        return isinstance(self.root, Path)

    def path(self, policy_name: str, version: int) -> Path:
        """A version's file on this disk (a registry in a local folder only: see ``local``)."""
        if not isinstance(self.root, Path):
            raise ValueError(f"the registry at {self.root} is on object storage: its versions are no files here")
        return self.root / self._dir(policy_name) / f"v{version:06d}.safetensors"

    def describe(self, policy_name: str, version: int) -> PolicyVersion | None:
        """A version's record (its note, when, size); None for one published before records were kept per
        version, or whose record is unreadable (the listing then shows it without a note)."""
        try:
            return PolicyVersion(**json.loads(self._blobs.get(f"{self._dir(policy_name)}/v{version:06d}.json") or ""))
        except (ValueError, TypeError):
            return None

    def sign_again(self, policy_name: str, version: int) -> bool:
        """Signs a version the learner's key did not sign (one published before versions were signed), in place;
        False when it was signed already. For versions the lab vouches for: ``fleetloop policy sign``."""
        if self.signer is None:
            raise ValueError("signing needs the learner's key")
        try:
            self.signer.check_file(self.read(policy_name, version), policy_name, version)
            return False
        except UnsignedVersion:
            pass
        weights = self.signer.sign(self.read(policy_name, version), policy_name, version, self.wire_dtypes())
        directory = self._dir(policy_name)
        self._blobs.put(f"{directory}/v{version:06d}.safetensors", weights, sync_folder=False)
        latest = self.latest(policy_name)
        if latest is not None and latest.version == version:
            signed = replace(latest, sha256=digest_of(weights), size_bytes=len(weights))
            self._blobs.put(f"{directory}/latest.json", json.dumps(asdict(signed)).encode(), sync_folder=False)
        return True

    def policies(self) -> list[str]:
        """The names of the policies this registry holds a published version of."""
        names = [name for name in self._blobs.children("") if POLICY_NAME.fullmatch(name)]
        return [name for name in names if self._blobs.get(f"{name}/latest.json") is not None]

    def read_note(self, policy_name: str, file: str) -> bytes | None:
        """A small file kept beside a policy's versions (e.g. its rollout records); None when there is none."""
        return self._blobs.get(f"{self._dir(policy_name)}/{file}")

    def write_note(self, policy_name: str, file: str, data: bytes) -> None:
        """Writes such a file whole (renamed into place, fsynced): a reader sees the old one or the new one."""
        self._blobs.put(f"{self._dir(policy_name)}/{file}", data, sync_folder=False)

    def versions(self, policy_name: str) -> list[int]:
        names = self._blobs.children(self._dir(policy_name))
        return sorted(int(n[1:-12]) for n in names if n.startswith("v") and n.endswith(".safetensors"))

    def rollback(self, policy_name: str, to_version: int | None = None) -> PolicyVersion:
        """Publishes an earlier version's weights again, as the next version (versions never go backwards,
        so every edge takes it like any update, and the steps it produces are told apart from the bad ones). A
        signing registry rolls back only to a version the learner's key signed (a ValueError naming ``to_version``
        otherwise): a file dropped into the folder is never signed by a rollback."""
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
        if self.signer is not None:  # re-signing a file the learner never signed would vouch for it
            try:
                self.signer.check_file(weights, policy_name, target)
            except UnsignedVersion as err:
                raise ValueError(
                    f"to_version: v{target} of {policy_name} cannot be rolled back to: {err}; if the lab vouches for "
                    f"it (published before versions were signed), run `fleetloop policy sign {policy_name}` first"
                ) from None
        return self.publish(policy_name, weights, note=f"rollback to v{target}")

    def read(self, policy_name: str, version: int) -> bytes:
        """A version's file as stored; FileNotFoundError when there is none."""
        key = f"{self._dir(policy_name)}/v{version:06d}.safetensors"
        weights = self._blobs.get(key)
        if weights is None:
            raise FileNotFoundError(f"{self._blobs.where}/{key}")
        return weights

    def read_header(self, policy_name: str, version: int) -> bytes:
        """The safetensors header alone (8-byte length + JSON), so a reader of a version's metadata (its type and
        config) need not read a large policy's weights."""
        key = f"{self._dir(policy_name)}/v{version:06d}.safetensors"
        length = self._blobs.get_range(key, 0, 8)
        if len(length) < 8:
            return length
        return length + self._blobs.get_range(key, 8, 8 + min(int.from_bytes(length, "little"), 100 * 1024 * 1024))
