"""The learner's signing key (ed25519): made by ``fleetloop certs init`` or on the learner's first start, kept in
``certs-learner-key/`` (0700, the key 0600) beside ``certs/``, apart from what the gateway reads; its public half is
``certs/learner.pub``.

Registries for the two sides: the learner's signs what it publishes (``signing_registry``); the gateway's and
inference servers' checks what they read against the public key alone (``verifying_registry``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from cloud.data.layout import DataLayout
from cloud.data.version_registry import PolicyRegistry
from policies.signing import Signer

log = logging.getLogger("fleetloop")


def learner_signer(layout: DataLayout) -> Signer:
    """The learner's key from the data folder, made there the first time (never replaced)."""
    path = layout.learner_key
    if path.is_file():
        signer = Signer.from_private_file(path)
        if not layout.learner_public_key.is_file():
            _write_public(layout, signer)
        return signer
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    signer = Signer.generate()
    # Written whole under a name of its own, then linked into place (atomic, never replacing): two first starts at
    # once (torchrun's ranks) keep the key the first one linked, and neither reads a half-written file.
    fd, name = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    temporary = Path(name)
    with os.fdopen(fd, "wb") as file:
        file.write(signer.private_pem())
        file.flush()
        os.fsync(file.fileno())
    try:
        os.link(temporary, path)
    except FileExistsError:
        return Signer.from_private_file(path)
    finally:
        temporary.unlink()
    _write_public(layout, signer)
    log.info("made the learner's signing key %s; robots check versions against %s", path, layout.learner_public_key)
    return signer


def _write_public(layout: DataLayout, signer: Signer) -> None:
    layout.learner_public_key.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".tmp", dir=layout.learner_public_key.parent)
    with os.fdopen(fd, "wb") as file:
        file.write(signer.public_pem())
    os.chmod(name, 0o644)
    os.replace(name, layout.learner_public_key)


def signing_registry(layout: DataLayout) -> PolicyRegistry:
    """The registry as the learner and ``fleetloop policy`` write it: every version signed."""
    return PolicyRegistry(layout.registry_at, signer=learner_signer(layout), public_key=layout.learner_public_key)


def verifying_registry(layout: DataLayout) -> PolicyRegistry:
    """The registry as the gateway reads it: versions checked against the learner's public key only."""
    return PolicyRegistry(layout.registry_at, public_key=layout.learner_public_key)
