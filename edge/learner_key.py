"""The learner's public key as an edge holds it, and the check every pushed version passes before it is handed on.

Where the key comes from, safest first: the file ``--learner-key`` names, else ``learner.pub`` beside ``--ca`` (both
copied from the cloud's ``certs/`` when the robot was set up), else the key the gateway sends in its Welcome over
the authenticated tunnel. A key of the robot's own cannot be changed by whoever writes the cloud's data folder; the
Welcome's key can be by whoever writes ``certs/learner.pub`` there (not by one who writes only the registry). A
Welcome key that differs from the robot's own is ignored, and said.
"""

from __future__ import annotations

import logging
from pathlib import Path

from policies.signing import UnsignedVersion, Verifier
from policies.tensor_view import Buffer
from policies.weights import read_metadata

log = logging.getLogger("fleetloop.tunnel")

PUBLIC_KEY_FILE = "learner.pub"


class LearnerKey:
    """The key versions are checked against: the robot's own (``pinned``) or the cloud's Welcome's."""

    def __init__(self, pinned: Verifier | None = None, source: str = "") -> None:
        self.pinned = pinned
        self.source = source  # where the pinned key came from, for the log
        self._welcomed: Verifier | None = None
        self._said_mismatch = False

    @classmethod
    def from_files(cls, learner_key: str | None, ca: str | None) -> LearnerKey:
        """The key of ``learner_key`` (a PEM file), else ``learner.pub`` beside ``ca`` when there is one."""
        if learner_key:
            return cls(Verifier.from_file(learner_key), learner_key)
        beside = Path(ca).parent / PUBLIC_KEY_FILE if ca else None
        if beside is not None and beside.is_file():
            return cls(Verifier.from_file(beside), str(beside))
        return cls()

    def welcomed(self, raw: bytes) -> None:
        """The key the gateway sent in its Welcome (empty: it has none)."""
        if not raw:
            return
        try:
            offered = Verifier.from_raw(raw)
        except ValueError as err:
            log.error("the cloud sent no usable learner key (%s); versions are refused until it does", err)
            return
        if self.pinned is None:
            self._welcomed = offered
        elif offered.raw() != self.pinned.raw() and not self._said_mismatch:
            self._said_mismatch = True
            log.error(
                "the cloud's learner key is not this robot's (%s): versions are checked against this robot's only",
                self.source,
            )

    def check(self, weights: Buffer, policy_name: str, version: int) -> None:
        """``UnsignedVersion`` unless the header of ``weights`` carries the learner's signature for this version."""
        verifier = self.pinned or self._welcomed
        if verifier is None:
            raise UnsignedVersion(f"{policy_name} v{version}: no learner key to check it against (give --learner-key)")
        try:
            metadata = read_metadata(weights)
        except ValueError as err:
            raise UnsignedVersion(f"{policy_name} v{version}: {err}") from None
        verifier.manifest(metadata, policy_name, version)
