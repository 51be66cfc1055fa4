"""The cloud's data folder (``--root`` of every command): the one place that knows what lives where in it.

The episode store and the policy registry are what several machines share (gateways, learner nodes): ``shared``
(``--store s3://bucket/prefix``, or another folder) puts them there, as ``store/`` and ``registry/`` under it, while
credentials, certificates, the learner's key and its checkpoint stay in the local data folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud.data.blobs import is_object_url, open_blobs

STORE_MARKER = "zarr.json"  # the episode store's root group: a folder holding it is a store


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
    ingest_log = _Under("ingest-log")  # the gateway's acked batches on their way to a store on object storage

    @property
    def store_at(self) -> Path | str:
        """The episode store: a folder, or a URL on object storage."""
        return self._shared("store") or self.store

    @property
    def ingest_log_at(self) -> Path | None:
        """Where the gateway logs acked batches on this machine: None (beside the store) for a store in a folder."""
        return self.ingest_log if is_object_url(self.shared) else None

    @property
    def registry_at(self) -> Path | str:
        """The policy registry: a folder, or a URL on object storage."""
        return self._shared("registry") or self.registry

    def _shared(self, name: str) -> Path | str:
        if not self.shared:
            return ""
        return f"{self.shared.rstrip('/')}/{name}" if is_object_url(self.shared) else Path(self.shared) / name

    def has_store(self) -> bool:
        return open_blobs(self.store_at).get(STORE_MARKER) is not None

    def root_problem(self) -> str | None:
        """Why ``root`` is no data folder, or None: an episode store given where its data folder belongs (the
        way ``--root`` was once used by export and import) would grow a second store nothing reads."""
        if (self.root / STORE_MARKER).is_file():
            return (
                f"{self.root} is an episode store itself; give the cloud's data folder that holds it as store/ "
                f"(here {self.root.parent})"
            )
        return None
