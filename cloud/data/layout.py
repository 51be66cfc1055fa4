"""The cloud's data folder (``--root`` of every command): the one place that knows what lives where in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STORE_MARKER = "zarr.json"  # the episode store's root group: a folder holding it is a store


@dataclass(frozen=True)
class DataLayout:
    """``root`` holds ``store/`` (episodes), ``registry/`` (policy versions), ``devices.json`` and
    ``phone-devices.json`` (credentials), ``certs/`` (the CA and the server certificate) and
    ``learner/checkpoint`` (where the learner resumes)."""

    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def devices(self) -> Path:
        return self.root / "devices.json"

    @property
    def phone_devices(self) -> Path:
        return self.root / "phone-devices.json"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def learner_checkpoint(self) -> Path:
        return self.root / "learner" / "checkpoint"

    def has_store(self) -> bool:
        return (self.store / STORE_MARKER).is_file()

    def root_problem(self) -> str | None:
        """Why ``root`` is no data folder, or None: an episode store given where its data folder belongs (the
        way ``--root`` was once used by export and import) would grow a second store nothing reads."""
        if (self.root / STORE_MARKER).is_file():
            return (
                f"{self.root} is an episode store itself; give the cloud's data folder that holds it as store/ "
                f"(here {self.root.parent})"
            )
        return None
