"""Every partition of a shared episode store read as one: what the learner, export and ``policy`` read.

Several gateways write into partitions of one store (``cloud.data.partitions``); ``StoreUnion`` gives the read API of
a read-only ``EpisodeStore`` over all of them (datasets, schema, committed rows, read, read_packets, episodes,
episode, next_seq...), finding new partitions at each ``refresh``.

Row numbers: a dataset's rows in the union are the partitions' rows in the order this reader first saw them: at each
refresh, each partition's newly committed rows are appended (partitions in the order they were found). So the union
only ever grows at its end, as one store does, and a reader that holds rows ``[0, n)`` (the learner's step index)
reads only what is new. The numbering belongs to this reader: another process may number the same rows otherwise, so
what crosses processes (the learner's frame loaders) names rows by partition (``locate``). A learner restarted on
several partitions numbers them afresh (partition by partition), so the row count its checkpoint saved is a count,
not a place: it only decides whether the first round after the restart has anything new to learn from.

Episodes: one record per episode id, whatever partitions hold it (an edge that reconnected to another gateway
mid-episode continues it there); its ``episode_index`` is the union's own, its statistics folded from its rows in seq
order. A step held by two partitions (a gateway killed after logging a batch whose ack the edge never got, and the
edge resending it to another gateway) is read once: the copy seen first.

With a single partition (one gateway, the default) the union reads it directly: the same rows, indexes and cost.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cloud.data.columns import STAT_COLUMNS, ColumnSpec
from cloud.data.episodes import EpisodeRecord, absorb
from cloud.data.partitions import Partitions
from cloud.data.store import EpisodeStore
from cloud.data.store_views import DatasetViews
from protocol.video import PacketColumn

log = logging.getLogger("fleetloop")

Located = tuple["str | Path", np.ndarray, np.ndarray]  # (partition root, rows there, positions in the rows asked)


@dataclass
class _Union:
    """One dataset over every partition."""

    name: str
    schema: dict[str, ColumnSpec]
    episodes: list[EpisodeRecord] = field(default_factory=list)
    seen_rows: dict[str, int] = field(default_factory=dict)  # partition -> its rows taken in
    seen_episodes: dict[str, int] = field(default_factory=dict)  # partition -> its episode records taken in
    index_of: dict[str, list[int]] = field(default_factory=dict)  # partition -> its episode_index -> the union's
    spans: dict[int, dict[str, list[tuple[int, int]]]] = field(default_factory=dict)  # episode -> partition -> runs
    single: str | None = None  # the one partition every row comes from, while rows and indexes are its own
    part: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # row -> partition number
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # row -> row in that partition
    rows: int = 0
    skipped: set[str] = field(default_factory=set)  # partitions whose dataset has another schema (logged once)


class StoreUnion(DatasetViews):
    """A read-only episode store over every partition of the store at ``root`` (see the module docstring)."""

    read_only = True

    def __init__(self, root: str | Path, chunk_rows: int = 256) -> None:
        self.root = root
        self.chunk_rows = chunk_rows
        self.partitions = Partitions(root)
        self._lock = threading.RLock()
        self._datasets: dict[str, _Union] = {}
        self._episode_of: dict[str, EpisodeRecord] = {}
        self._numbers: dict[str, int] = {}  # partition -> its number in ``_Union.part``
        self.refresh()

    @property
    def bad_frames(self) -> int:
        return sum(store.bad_frames for store in self.partitions.stores.values())

    def close(self) -> None:
        self.partitions.close()

    def __enter__(self) -> StoreUnion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- refreshing ----

    def refresh(self) -> None:
        """Finds new partitions and takes in what every partition committed since the last call."""
        with self._lock:
            self.partitions.refresh()
            for name, store in self.partitions.stores.items():
                self._numbers.setdefault(name, len(self._numbers))
                for dataset in store.datasets():
                    union = self._dataset(name, dataset, store.schema(dataset))
                    if union is not None:
                        self._take(union, name, store)

    def _dataset(self, partition: str, dataset: str, schema: dict[str, ColumnSpec]) -> _Union | None:
        union = self._datasets.get(dataset)
        if union is None:
            union = self._datasets[dataset] = _Union(dataset, schema)
        uncoded = {c: replace(s, codec="") for c, s in schema.items()}
        if uncoded != {c: replace(s, codec="") for c, s in union.schema.items()}:
            if partition not in union.skipped:
                union.skipped.add(partition)
                log.error("store: partition %r keeps dataset %s in another shape; not read", partition, dataset)
            return None
        return union

    def _take(self, union: _Union, partition: str, store: EpisodeStore) -> None:
        """Takes in the partition's new episode records, labels and rows of the dataset."""
        records = store.episodes(union.name)
        mapping = union.index_of.setdefault(partition, [])
        for record in records[union.seen_episodes.get(partition, 0) :]:
            known = self._episode_of.get(record.episode_id)
            if known is None or known.dataset != union.name:
                known = EpisodeRecord(union.name, len(union.episodes), *_provenance(record))
                union.episodes.append(known)
                self._episode_of[record.episode_id] = known
            mapping.append(known.index)
        union.seen_episodes[partition] = len(records)
        for record in records:  # a label arrives after the episode's rows
            if record.label:
                mine = union.episodes[mapping[record.index]]
                mine.label, mine.labelled_by = record.label, record.labelled_by
        start, stop = union.seen_rows.get(partition, 0), store.committed_rows(union.name)
        if stop > start:
            self._take_rows(union, partition, store, start, stop)
        union.seen_rows[partition] = stop

    def _take_rows(self, union: _Union, partition: str, store: EpisodeStore, start: int, stop: int) -> None:
        stats = store.read(union.name, STAT_COLUMNS, start, stop)
        mapping = np.asarray(union.index_of[partition], np.int64)
        stats["episode_index"] = mapping[stats["episode_index"]]
        keep = self._first_copies(union, partition, stats["episode_index"], stats["seq"])
        if union.single is None and union.rows == 0:
            union.single = partition
        identity = mapping.size == 0 or bool((mapping == np.arange(mapping.size)).all())
        if union.single is not None and (union.single != partition or not keep.all() or not identity):
            union.part = np.full(union.rows, self._numbers[union.single], np.int32)  # from now on rows are mapped
            union.row = np.arange(union.rows, dtype=np.int64)
            union.single = None
        if union.single is None:
            kept_rows = np.arange(start, stop, dtype=np.int64)[keep]
            union.part = np.concatenate([union.part, np.full(len(kept_rows), self._numbers[partition], np.int32)])
            union.row = np.concatenate([union.row, kept_rows])
        absorb(union.episodes, {name: values[keep] for name, values in stats.items()}, by_seq=True)
        union.rows += int(keep.sum())

    @staticmethod
    def _first_copies(union: _Union, partition: str, episodes: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        """Which rows to keep: not those whose (episode, seq) another partition gave first. Notes each partition's
        runs of consecutive seqs per episode (a partition may hold an episode in several runs)."""
        keep = np.ones(len(episodes), bool)
        order = np.lexsort((seqs, episodes))
        groups, firsts, counts = np.unique(episodes[order], return_index=True, return_counts=True)
        for episode, first, count in zip(groups.tolist(), firsts.tolist(), counts.tolist(), strict=True):
            rows = order[first : first + count]
            spans = union.spans.setdefault(episode, {})
            for other, runs in spans.items():
                if other != partition:
                    for lo, hi in runs:
                        keep[rows] &= (seqs[rows] < lo) | (seqs[rows] > hi)
            spans[partition] = _runs(spans.get(partition, []), seqs[rows])
        return keep

    # ---- what readers ask ----

    def drivers(self, dataset: str, episode_id: str) -> dict[int, str]:
        """seq -> who, over every partition that holds rows of the episode."""
        drove: dict[int, str] = {}
        for store in self.partitions.stores.values():
            if dataset in store.datasets() and store.episode(episode_id) is not None:
                drove.update(store.drivers(dataset, episode_id))
        return drove

    def row_indices(self, dataset: str, episode_id: str) -> np.ndarray:
        """Committed rows of one episode, in seq order."""
        record = self._episode_of.get(episode_id)
        if record is None or record.dataset != dataset:
            return np.zeros(0, np.int64)
        both = self.read(dataset, ["episode_index", "seq"])
        rows = np.flatnonzero(both["episode_index"] == record.index)
        return rows[np.argsort(both["seq"][rows], kind="stable")]

    def locate(self, dataset: str, rows: np.ndarray) -> list[Located]:
        """Where union ``rows`` are: (partition root, its rows, their positions in ``rows``) per partition."""
        union = self._get(dataset)
        rows = np.asarray(rows, np.int64)
        if union.single is not None:
            return [(self.partitions.stores[union.single].root, rows, np.arange(len(rows)))]
        names = list(self._numbers)
        parts, located = union.part[rows], []
        for number in np.unique(parts).tolist():
            positions = np.flatnonzero(parts == number)
            located.append((self.partitions.stores[names[number]].root, union.row[rows[positions]], positions))
        return located

    def partition_store(self, root: str | Path) -> EpisodeStore:
        """The open partition at ``root`` (as ``locate`` names it)."""
        return next(store for store in self.partitions.stores.values() if store.root == root)

    def _bounds(self, union: _Union, start: int, stop: int | None) -> tuple[int, int]:
        stop = union.rows if stop is None else max(0, min(stop, union.rows))
        return max(0, min(start, stop)), stop

    def read(
        self, dataset: str, columns: list[str] | None = None, start: int = 0, stop: int | None = None
    ) -> dict[str, np.ndarray]:
        """Union rows [start, stop) of the given columns (all by default), as ``EpisodeStore.read``."""
        union = self._get(dataset)
        names = list(union.schema) if columns is None else columns
        for name in names:
            if name not in union.schema:
                raise KeyError(f"{name}: not a column of dataset {dataset}")
        start, stop = self._bounds(union, start, stop)
        if union.single is not None:
            return self.partitions.stores[union.single].read(dataset, names, start, stop)
        out = {n: np.empty((stop - start, *union.schema[n].shape), union.schema[n].dtype) for n in names}
        for root, rows, positions in self.locate(dataset, np.arange(start, stop)):
            name = next(n for n, s in self.partitions.stores.items() if s.root == root)
            lo, hi = int(rows.min()), int(rows.max()) + 1
            block = self.partitions.stores[name].read(dataset, names, lo, hi)
            for column, values in block.items():
                values = values[rows - lo]
                if column == "episode_index":
                    values = np.asarray(union.index_of[name], np.int64)[values]
                out[column][positions] = values
        return out

    def read_packets(self, dataset: str, column: str, start: int = 0, stop: int | None = None) -> PacketColumn:
        """Union rows [start, stop) of an encoded camera column as stored, one packet per row, in row order."""
        union = self._get(dataset)
        spec = union.schema.get(column)
        if spec is None or not spec.codec:
            raise KeyError(f"{column}: not an encoded camera column of dataset {dataset}")
        start, stop = self._bounds(union, start, stop)
        packets: list[bytes] = [b""] * (stop - start)
        keyframe = np.zeros(stop - start, bool)
        for root, rows, positions in self.locate(dataset, np.arange(start, stop)):
            lo, hi = int(rows.min()), int(rows.max()) + 1
            stored = self.partition_store(root).read_packets(dataset, column, lo, hi)
            for position, row in zip(positions.tolist(), (rows - lo).tolist(), strict=True):
                packets[position] = stored.packets[row]
            keyframe[positions] = stored.keyframe[rows - lo]
        return PacketColumn(spec.codec, tuple(packets), keyframe)


def _provenance(record: EpisodeRecord) -> tuple[str, str, str, str]:
    return record.episode_id, record.resource_id, record.source, record.task


def _runs(runs: list[tuple[int, int]], seqs: np.ndarray) -> list[tuple[int, int]]:
    """``runs`` (inclusive seq ranges) with the sorted ``seqs`` added, touching runs merged."""
    breaks = np.flatnonzero(np.diff(seqs) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(seqs)]]) - 1
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted([*runs, *zip(seqs[starts].tolist(), seqs[stops].tolist(), strict=True)]):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged
