"""Signed policy versions: the learner's ed25519 key vouches for each version it publishes.

A signed version's safetensors metadata carries a manifest (``MANIFEST``, canonical JSON) and its signature
(``SIGNATURE``, hex). The manifest binds the policy name and version number, the policy type, a digest of the config
text, a digest of the whole state as each wire dtype carries it (so a delta or a bfloat16 snapshot built by the
gateway is checked as well as the registry file) and each tensor's dtype. A reader checks the signature and the
header's type and config against it from the header alone, before any tensor or config is parsed (``Verifier``),
then the rebuilt state against the manifest's digests (``Manifest.check_state``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from policies.tensor_view import WIRE_DTYPES, Buffer, Layout, LayoutError, digests, on_wire, tensor_digest

__all__ = ["WIRE_DTYPES", "on_wire", "tensor_digest"]

MANIFEST = "fleetloop.manifest"
SIGNATURE = "fleetloop.signature"
NOT_SIGNED = "not signed by this cloud's learner"


class UnsignedVersion(ValueError):
    """A version whose signature is missing or not the learner's, or whose bytes differ from what it signed."""


def state_digest(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}={digests[name]}\n" for name in sorted(digests)).encode()).hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What the learner signed about one version."""

    policy: str
    version: int
    type: str
    config_sha256: str
    state_sha256: dict[str, str]  # wire dtype -> digest of the whole state as that dtype carries it
    dtypes: dict[str, str]  # tensor -> its dtype in the policy

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            fields = json.loads(text)
            manifest = cls(**fields)
        except (TypeError, ValueError) as err:
            raise UnsignedVersion(f"{MANIFEST}: malformed ({err})") from None
        if not isinstance(manifest.state_sha256, dict) or not isinstance(manifest.dtypes, dict):
            raise UnsignedVersion(f"{MANIFEST}: malformed (state_sha256 and dtypes must be objects)")
        return manifest

    def check_state(self, digests: dict[str, str]) -> None:
        """The rebuilt state (wire digests of every tensor) is the one the learner signed, in some wire dtype."""
        if state_digest(digests) not in self.state_sha256.values():
            raise UnsignedVersion(f"{self.policy} v{self.version}: its tensors are not the ones the learner signed")


class Verifier:
    """Checks versions against the learner's public key."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self.public_key = public_key

    @classmethod
    def from_raw(cls, raw: bytes) -> Verifier:
        try:
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as err:
            raise ValueError(f"learner key: not an ed25519 public key ({err})") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Verifier:
        """A PEM public key file (``learner.pub``, written by ``fleetloop certs init`` or the learner)."""
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except ValueError as err:
            raise ValueError(f"{path}: not a PEM public key ({err})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: not an ed25519 public key")
        return cls(key)

    def raw(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def manifest(self, metadata: dict[str, str], policy_name: str, version: int) -> Manifest:
        """The signed manifest of ``policy_name`` v``version`` from a header's metadata; ``UnsignedVersion`` unless
        the learner signed it and the header's type and config are the ones it signed."""
        where = f"{policy_name} v{version}"
        text, signature = metadata.get(MANIFEST), metadata.get(SIGNATURE)
        if not isinstance(text, str) or not isinstance(signature, str):
            raise UnsignedVersion(f"{where}: {NOT_SIGNED} (it carries no signature)")
        try:
            self.public_key.verify(bytes.fromhex(signature), text.encode())
        except (InvalidSignature, ValueError):
            raise UnsignedVersion(f"{where}: {NOT_SIGNED} (the signature is another key's or broken)") from None
        manifest = Manifest.from_json(text)
        if (manifest.policy, manifest.version) != (policy_name, version):
            why = f"signed as {manifest.policy} v{manifest.version}, not as {where}"
            raise UnsignedVersion(f"{where}: {why}")
        if manifest.type != metadata.get("type") or manifest.config_sha256 != text_digest(metadata.get("config", "")):
            raise UnsignedVersion(f"{where}: its type or config is not the one the learner signed")
        return manifest

    def check_file(self, weights: Buffer, policy_name: str, version: int) -> Manifest:
        """A whole registry file: header and tensors as signed (its tensors hashed in place, several at once)."""
        try:
            layout = Layout.parse(weights)
        except LayoutError as err:
            raise UnsignedVersion(f"{policy_name} v{version}: not a safetensors file ({err})") from None
        manifest = self.manifest(layout.metadata, policy_name, version)
        tensors = layout.tensors(weights)
        manifest.check_state(digests(tensors, dict.fromkeys(tensors, "float32")))
        return manifest


class StreamCheck:
    """A registry file checked against the learner's signature while its bytes pass by in order (read from disk as
    it is sent): the header's signature as soon as the header is in, each tensor's digest as its bytes go by, so a
    large version is checked in the pass that reads it, not in a second one. With no ``verifier`` the header is only
    parsed and the tensors hashed (a reader that checks the signature itself, once the file is whole)."""

    def __init__(self, verifier: Verifier | None, policy_name: str, version: int, total_bytes: int) -> None:
        self.verifier, self.policy_name, self.version, self.total_bytes = verifier, policy_name, version, total_bytes
        self.where = f"{policy_name} v{version}"
        self.received = 0
        self.manifest: Manifest | None = None  # set once the header passed
        self.metadata: dict[str, str] = {}  # the header's, once it passed
        self.sizes: dict[str, int] = {}  # each tensor's bytes, once the header passed
        self.digests: dict[str, str] = {}  # each tensor's (as tensor_digest makes it) once all its bytes passed
        self._head = bytearray()  # the bytes before the header is whole
        self._spans: list[tuple[str, int, Any]] = []  # (tensor, end offset in the file, its hasher), in file order
        self._at = 0  # the span the next byte belongs to
        self._header_read = False

    def update(self, data: Buffer) -> None:
        """The next ``data``; ``UnsignedVersion`` as soon as what passed cannot be the version the learner signed."""
        view = memoryview(data).cast("B")
        offset = self.received
        self.received += len(view)
        if self.received > self.total_bytes:
            raise UnsignedVersion(f"{self.where}: longer than the {self.total_bytes} bytes it was announced with")
        if not self._header_read:
            self._head += view
            if len(self._head) < 8 or len(self._head) < 8 + int.from_bytes(self._head[:8], "little"):
                return
            offset, view = self._check_header()
        self._hash(offset, view)

    def _check_header(self) -> tuple[int, memoryview]:
        """Checks the header's signature; returns where the data section starts and its bytes received so far."""
        try:
            layout = Layout.parse(self._head, self.total_bytes)
        except LayoutError as err:
            raise UnsignedVersion(f"{self.where}: not a safetensors file ({err})") from None
        if self.verifier is not None:
            self.manifest = self.verifier.manifest(layout.metadata, self.policy_name, self.version)
        self.metadata, self._header_read = layout.metadata, True
        for name, (dtype, shape, begin, end) in sorted(layout.entries.items(), key=lambda item: item[1][2:]):
            hasher = hashlib.sha256(f"{dtype}:{shape}:".encode())  # as tensor_digest hashes a tensor
            self._spans.append((name, layout.header_bytes + end, hasher))
            self.sizes[name] = end - begin
        head, self._head = self._head, bytearray()
        return layout.header_bytes, memoryview(head)[layout.header_bytes :]

    def _hash(self, offset: int, view: memoryview) -> None:
        while self._at < len(self._spans):
            name, end, hasher = self._spans[self._at]
            take = min(end - offset, len(view))
            if take:
                hasher.update(view[:take])
                offset, view = offset + take, view[take:]
            if offset < end:
                return
            self.digests[name] = hasher.hexdigest()
            self._at += 1

    def finish(self) -> Manifest | None:
        """The learner's manifest once every byte passed and every tensor is the one it signed (None with no
        ``verifier``: every tensor hashed); else UnsignedVersion."""
        if not self._header_read or self.received != self.total_bytes:
            raise UnsignedVersion(f"{self.where}: {self.received} of its {self.total_bytes} bytes were checked")
        self._hash(self.received, memoryview(b""))  # tensors of no bytes at the very end
        if self.manifest is not None:
            self.manifest.check_state(self.digests)
        elif self.verifier is not None:
            raise UnsignedVersion(f"{self.where}: {NOT_SIGNED}")
        return self.manifest


class SignedHeader(NamedTuple):
    """A signed header, where the data section it heads starts in the weights it was made from, and each tensor's
    ``tensor_digest`` as stored (its float32 wire digest, taken while signing)."""

    header: bytes
    data_start: int
    digests: dict[str, str]


class Signer(Verifier):
    """The learner's private key: signs the versions it publishes."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        super().__init__(private_key.public_key())
        self.private_key = private_key

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_file(cls, path: str | Path) -> Signer:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an ed25519 private key")
        return cls(key)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, weights: Buffer, policy_name: str, version: int, wire_dtypes: Iterable[str] = WIRE_DTYPES) -> bytes:
        """``weights`` (``policies.weights.policy_to_bytes`` output) signed as ``policy_name`` v``version``; a
        signature it carried before (a rollback republishes older weights) is replaced."""
        header, data_start, _ = self.signed_header(weights, policy_name, version, wire_dtypes)
        return b"".join((header, memoryview(weights)[data_start:]))

    def signed_header(
        self, weights: Buffer, policy_name: str, version: int, wire_dtypes: Iterable[str] = WIRE_DTYPES
    ) -> SignedHeader:
        """The header of ``weights`` signed as ``policy_name`` v``version`` (8-byte length and JSON), where the data
        section of ``weights`` starts (that header followed by that data section is the signed file) and the tensors'
        digests. The tensors are hashed in place, the digests of every wire dtype in ``wire_dtypes`` at once (float32
        always: the registry file itself); the data section is not copied."""
        layout, wires = _layout(weights, wire_dtypes)
        tensors = layout.tensors(weights)
        jobs = {(wire, name): tensor for wire in wires for name, tensor in tensors.items()}
        wire_digests = digests(jobs, {key: key[0] for key in jobs})
        state = {wire: state_digest({name: wire_digests[wire, name] for name in tensors}) for wire in wires}
        header = self._header(layout, tensors, policy_name, version, state)
        return SignedHeader(header, layout.header_bytes, {name: wire_digests["float32", name] for name in tensors})

    def signed_header_bytes(
        self, weights: Buffer, policy_name: str, version: int, wire_dtypes: Iterable[str] = WIRE_DTYPES
    ) -> int:
        """How long ``signed_header`` of the same arguments is, known before any tensor is hashed (every digest and
        the signature are hex of a fixed length), so the data section can be written while the header is made."""
        layout, wires = _layout(weights, wire_dtypes)
        unknown = dict.fromkeys(wires, "0" * 64)  # a sha256 in hex, as state_digest makes one
        return len(self._header(layout, layout.tensors(weights), policy_name, version, unknown))

    def _header(
        self, layout: Layout, tensors: dict[str, Any], policy_name: str, version: int, state: dict[str, str]
    ) -> bytes:
        metadata = {k: v for k, v in layout.metadata.items() if k not in (MANIFEST, SIGNATURE)}
        manifest = Manifest(
            policy=policy_name,
            version=version,
            type=metadata.get("type", ""),
            config_sha256=text_digest(metadata.get("config", "")),
            state_sha256=state,
            dtypes={name: str(t.dtype).removeprefix("torch.") for name, t in tensors.items()},
        )
        text = manifest.to_json()
        signature = self.private_key.sign(text.encode()).hex()
        return layout.header({**metadata, MANIFEST: text, SIGNATURE: signature})


def _layout(weights: Buffer, wire_dtypes: Iterable[str]) -> tuple[Layout, list[str]]:
    """The layout of ``weights`` to sign, and the wire dtypes to sign it for (float32 always)."""
    try:
        layout = Layout.parse(weights)
    except LayoutError as err:
        raise ValueError(f"weights: {err}") from None
    wires = sorted({"float32", *wire_dtypes})
    if unknown := [wire for wire in wires if wire not in WIRE_DTYPES]:
        raise ValueError(f"wire_dtypes: {unknown} are none of {sorted(WIRE_DTYPES)}")
    return layout, wires
