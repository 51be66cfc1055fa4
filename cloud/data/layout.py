"""The cloud's data folder (``--root`` of every command): the one place that knows what lives where in it.

The episode store and the policy registry are what several machines share (gateways, learner nodes): ``shared``
(``--store s3://bucket/prefix``, or another folder) puts them there, as ``store/`` and ``registry/`` under it, while
credentials, certificates, the learner's key and its checkpoint stay in the local data folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cloud.data.blobs import is_object_url, open_blobs

STORE_MARKER = "zarr.json"  # the episode store's root group: a folder holding it is a store
PARTS = "@parts"  # under the store: a folder per gateway's partition ('@' keeps it apart from dataset names)
GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # names a gateway's partition of a shared store


def check_gateway_id(name: str) -> str:
    """``name`` if it can name a gateway's partition (ValueError naming the flag otherwise)."""
    if not GATEWAY_ID.fullmatch(name):
        raise ValueError(f"--gateway-id: {name!r} must be 1-64 letters, digits, '_', '.', '-'")
    return name


class _Under:
    """A place in the data folder, as a path under its root."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, layout: DataLayout, owner: type | None = None) -> Path:
        return layout.root.joinpath(*self.parts)


@dataclass(frozen=True)
class DataLayout:
    """What lives where in the data folder ``root``."""

    root: Path
    shared: str = ""  # where the store and the registry live instead of under root (s3://bucket/prefix or a folder)

    store = _Under("store")  # the episodes
    registry = _Under("registry")  # the published policy versions
    devices = _Under("devices.json")  # robot credentials
    phone_devices = _Under("phone-devices.json")  # phone credentials
    certs = _Under("certs")  # the CA and the server certificate
    # The learner's signing key, in a folder of its own beside certs/ (as the CA's key is kept): the gateway never
    # reads it. Its public half lies beside ca.pem (copied to robots with it: ``fleetloop edge --ca`` finds it there).
    learner_key = _Under("certs-learner-key", "signing.key")
    learner_public_key = _Under("certs", "learner.pub")
    learner_checkpoint = _Under("learner", "checkpoint")  # where the learner resumes
    runs = _Under("runs")  # the learner's curves: TensorBoard event files, W&B and trackio runs (cloud.learning.curves)
    ingest_log = _Under("ingest-log")  # the gateway's acked batches on their way to a store on object storage

    @property
    def store_at(self) -> Path | str:
        """The episode store: a folder, or a URL on object storage."""
        return self._shared("store") or self.store

    def ingest_log_at(self, gateway_id: str = "") -> Path | None:
        """Where gateway ``gateway_id`` logs acked batches on this machine: None (beside its partition of the store)
        for a store in a folder. Gateways sharing one data folder each keep their own."""
        if not is_object_url(self.shared):
            return None
        return self.ingest_log.with_name(f"ingest-log@{gateway_id}") if gateway_id else self.ingest_log

    @property
    def registry_at(self) -> Path | str:
        """The policy registry: a folder, or a URL on object storage."""
        return self._shared("registry") or self.registry

    def _shared(self, name: str) -> Path | str:
        if not self.shared:
            return ""
        return f"{self.shared.rstrip('/')}/{name}" if is_object_url(self.shared) else Path(self.shared) / name

    def has_store(self) -> bool:
        """Whether a store is there: written by one gateway, or by several (each its partition, ``PARTS``)."""
        blobs = open_blobs(self.store_at)
        return blobs.get(STORE_MARKER) is not None or bool(blobs.children(PARTS))

    def root_problem(self) -> str | None:
        """Why ``root`` is no data folder, or None: an episode store given where its data folder belongs (the
        way ``--root`` was once used by export and import) would grow a second store nothing reads."""
        if (self.root / STORE_MARKER).is_file():
            return (
                f"{self.root} is an episode store itself; give the cloud's data folder that holds it as store/ "
                f"(here {self.root.parent})"
            )
        return None
