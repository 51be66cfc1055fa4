"""The digest a policy version is recorded and pushed with, taken without a pass of its own over the tensors.

A version's digest is ``tensors-sha256:`` and the sha256 of its header's bytes (the safetensors length and JSON: every
tensor's name, dtype, shape and place) and of its tensors' digests (``tensor_digest``, as the learner's signature
binds them, ``state_digest``). The header fixes where every byte of the data section belongs and each tensor's digest
fixes its bytes, so it binds the whole file as a sha256 of the file would; but its tensor digests are the ones signing
(on the learner) and the signature check (on the edge) take anyway, so neither hashes 200 MB a second time for it.

Versions recorded before carry a plain sha256 of the file (64 hex digits, no prefix); they are still read: checking
one hashes the whole file once more. Bytes that are no safetensors file (an unsigned registry accepts any) get a plain
sha256 too.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from policies.signing import state_digest
from policies.tensor_view import Buffer, Layout, LayoutError, digests

PREFIX = "tensors-sha256:"


def version_digest(header: Buffer, tensor_digests: Mapping[str, str]) -> str:
    """The digest of the file made of ``header`` (its first ``Layout.header_bytes`` bytes) and tensors whose
    ``tensor_digest`` by name are ``tensor_digests``."""
    text = f"fleetloop version\n{hashlib.sha256(header).hexdigest()}\n{state_digest(dict(tensor_digests))}\n"
    return PREFIX + hashlib.sha256(text.encode()).hexdigest()


def digest_of(weights: Buffer) -> str:
    """The digest of a whole file in memory (its tensors hashed in place, several at once); a plain sha256 for bytes
    that are no safetensors file."""
    try:
        layout = Layout.parse(weights)
    except LayoutError:
        return hashlib.sha256(weights).hexdigest()
    return version_digest(memoryview(weights)[: layout.header_bytes], digests(layout.tensors(weights)))


def digest_matches(weights: Buffer, expected: str, tensor_digests: Mapping[str, str] | None = None) -> bool:
    """Whether ``weights`` are the file ``expected`` names. ``tensor_digests``: those of these very bytes, when taken
    already (as they arrived), so that only the header is hashed here."""
    if not expected.startswith(PREFIX):  # recorded before versions had this digest: a plain sha256 of the file
        return hmac.compare_digest(hashlib.sha256(weights).hexdigest(), expected)
    try:
        layout = Layout.parse(weights)
    except LayoutError:
        return False
    if tensor_digests is None or set(tensor_digests) != set(layout.entries):
        tensor_digests = digests(layout.tensors(weights))
    return hmac.compare_digest(version_digest(memoryview(weights)[: layout.header_bytes], tensor_digests), expected)
