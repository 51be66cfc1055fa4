"""What a reader asks of a store's datasets and episodes, alike for one store and for the union of several."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from cloud.data.columns import ColumnSpec
from cloud.data.episodes import EpisodeRecord


class DatasetViews:
    """Datasets (each with ``name``, ``schema``, ``rows`` committed and ``episodes``) and episodes by id, as a store
    keeps them in memory: ``EpisodeStore`` and ``StoreUnion`` both answer through these."""

    root: Path | str
    _datasets: dict[str, Any]
    _episode_of: dict[str, EpisodeRecord]
    _lock: threading.RLock

    def schema(self, dataset: str) -> dict[str, ColumnSpec]:
        """Every column of the dataset, seq and episode_index included."""
        return dict(self._get(dataset).schema)

    def datasets(self) -> list[str]:
        return sorted(self._datasets)

    def _get(self, dataset: str) -> Any:
        ds = self._datasets.get(dataset)
        if ds is None:
            raise KeyError(f"dataset: no dataset {dataset!r} in {self.root}")
        return ds

    def committed_rows(self, dataset: str) -> int:
        return self._get(dataset).rows

    def next_seq(self, episode_id: str) -> int:
        """The seq the episode continues at: 0 for an unknown episode."""
        record = self._episode_of.get(episode_id)
        return 0 if record is None else record.next_seq

    def owner(self, episode_id: str) -> str | None:
        """The resource that recorded the episode, None for an unknown one. Takes no lock (a record's resource never
        changes), so the gateway's loop never waits here for a store write under way on another thread."""
        record = self._episode_of.get(episode_id)
        return None if record is None else record.resource_id

    def episode(self, episode_id: str) -> EpisodeRecord | None:
        with self._lock:  # copies of records a write is not halfway through updating
            record = self._episode_of.get(episode_id)
            return None if record is None else replace(record)

    def episodes(self, dataset: str | None = None) -> list[EpisodeRecord]:
        """Episodes with committed rows, in episode_index order (per dataset, datasets sorted)."""
        names = self.datasets() if dataset is None else [self._get(dataset).name]
        with self._lock:
            return [replace(record) for name in names for record in self._datasets[name].episodes]
