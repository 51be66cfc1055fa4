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
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST = "fleetloop.manifest"
SIGNATURE = "fleetloop.signature"
WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
NOT_SIGNED = "not signed by this cloud's learner"


class UnsignedVersion(ValueError):
    """A version whose signature is missing or not the learner's, or whose bytes differ from what it signed."""


def tensor_digest(tensor: torch.Tensor) -> str:
    digest = hashlib.sha256(f"{tensor.dtype}:{tuple(tensor.shape)}:".encode())
    digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_digest(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}={digests[name]}\n" for name in sorted(digests)).encode()).hexdigest()


def on_wire(tensor: torch.Tensor, wire_dtype: str) -> torch.Tensor:
    """A tensor as it travels: float32 cast to the wire dtype, everything else as it is."""
    return tensor.to(WIRE_DTYPES[wire_dtype]) if tensor.dtype == torch.float32 else tensor


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

    def check_file(self, weights: bytes, policy_name: str, version: int) -> Manifest:
        """A whole registry file: header and tensors as signed (read by safetensors alone)."""
        from policies.weights import read_metadata

        manifest = self.manifest(read_metadata(weights), policy_name, version)
        try:
            tensors = safetensors.torch.load(weights)
        except safetensors.SafetensorError as err:
            raise UnsignedVersion(f"{policy_name} v{version}: not a safetensors file ({err})") from None
        manifest.check_state({name: tensor_digest(on_wire(t, "float32")) for name, t in tensors.items()})
        return manifest


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

    def sign(self, weights: bytes, policy_name: str, version: int) -> bytes:
        """``weights`` (``policies.weights.policy_to_bytes`` output) signed as ``policy_name`` v``version``; a
        signature it carried before (a rollback republishes older weights) is replaced."""
        from policies.weights import read_metadata

        metadata = {k: v for k, v in read_metadata(weights).items() if k not in (MANIFEST, SIGNATURE)}
        tensors = safetensors.torch.load(weights)
        manifest = Manifest(
            policy=policy_name,
            version=version,
            type=metadata.get("type", ""),
            config_sha256=text_digest(metadata.get("config", "")),
            state_sha256={
                wire: state_digest({name: tensor_digest(on_wire(t, wire)) for name, t in tensors.items()})
                for wire in WIRE_DTYPES
            },
            dtypes={name: str(t.dtype).removeprefix("torch.") for name, t in tensors.items()},
        )
        text = manifest.to_json()
        signature = self.private_key.sign(text.encode()).hex()
        return safetensors.torch.save(tensors, metadata={**metadata, MANIFEST: text, SIGNATURE: signature})
