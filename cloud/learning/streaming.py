"""Training batches' large columns fetched from the episode store as they are drawn, never all held.

A round draws its batches' row indices first (``cloud.learning.sampler.Sampler.draw``, as before); the large columns
of those rows (cameras, ``StepTable.streamed``) come from the store through a ``FrameCache``: blocks of consecutive
rows, decoded once and kept, least recently used dropped first, at most ``cache_bytes`` in all. This is RLinf-USER's
cache-aware buffer in small: memory is bounded by the cache, not by what the fleet ever recorded.

With ``workers`` > 0 a torch DataLoader fetches and decodes in that many processes (spawned once, kept for the
learner's life: forking a process that runs the gateway's gRPC threads is unsafe); each opens its own read-only
store and holds ``cache_bytes / workers`` of cache, and prefetches two batches ahead of training. With 0 the learner's
thread fetches, through the learner's own store.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cloud.data.columns import rows_per_chunk
from cloud.data.store import ColumnSpec, EpisodeStore
from cloud.data.store_union import Located, StoreUnion

log = logging.getLogger("fleetloop.learner")
Rows = EpisodeStore | StoreUnion  # a store, or every partition of a shared one

# Rows of an encoded camera decoded together: a cold frame costs its lead-in from the keyframe plus these
# (64 ran 1.3x slower than 16 in bench learner-cost). Raw columns: one zarr chunk.
ENCODED_BLOCK_ROWS = 16
STATS_ROWS = 256  # rows whose frames a policy's normalization statistics see, at most


class FrameCache:
    """Blocks of rows of a store's columns, least recently used dropped first; never more than ``max_bytes``.

    ``store``: an ``EpisodeStore`` or a ``StoreUnion`` (several gateways' partitions), which says in which partition
    a row lies (``locate``); blocks are a partition's rows, so a loader worker reads them by the partition's root,
    whatever numbering the learner's union gave them. None in a worker: it opens each partition it is sent to."""

    def __init__(self, store: Rows | None, max_bytes: int, chunk_rows: int = 256) -> None:
        self.store = store
        self.chunk_rows = store.chunk_rows if store is not None else chunk_rows
        self.max_bytes = max_bytes
        self.bytes = 0
        self.peak_bytes = 0
        self.hits = 0
        self.misses = 0  # blocks read (and decoded) from the store
        self._blocks: OrderedDict[tuple[str, str, str, int], np.ndarray] = OrderedDict()
        self._opened: dict[str, EpisodeStore] = {}

    def block_rows(self, spec: ColumnSpec) -> int:
        """Rows per block: a raw column's zarr chunk (one file read), or a run an encoded camera decodes at once."""
        return ENCODED_BLOCK_ROWS if spec.codec else rows_per_chunk(spec, self.chunk_rows)

    def rows(self, dataset: str, column: str, rows: np.ndarray) -> np.ndarray:
        """``column`` at committed ``rows`` (any order, repeats allowed), (len(rows), *shape)."""
        assert self.store is not None, "a worker's cache is sent located rows"
        return self.located_rows(dataset, column, len(rows), self.store.locate(dataset, rows))

    def located_rows(self, dataset: str, column: str, count: int, located: list[Located]) -> np.ndarray:
        """``column`` at ``count`` rows given by partition (``locate``'s answer)."""
        source = self.store if self.store is not None else self._partition(located[0][0])
        spec = source.schema(dataset)[column]
        out = np.empty((count, *spec.shape), spec.dtype)
        for root, rows, positions in located:
            out[positions] = self._partition_rows(root, dataset, column, spec, rows)
        return out

    def _partition(self, root: str | Path) -> EpisodeStore:
        store = self._opened.get(str(root))
        if store is None:
            if self.store is not None:
                store = self.store.partition_store(root)
            else:
                store = EpisodeStore(root, self.chunk_rows, read_only=True)
            self._opened[str(root)] = store
        return store

    def _partition_rows(
        self, root: str | Path, dataset: str, column: str, spec: ColumnSpec, rows: np.ndarray
    ) -> np.ndarray:
        size = self.block_rows(spec)
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), *spec.shape), spec.dtype)
        blocks = rows // size
        for block in np.unique(blocks):
            picked = blocks == block
            offsets = rows[picked] - block * size
            values = self._block(root, dataset, column, int(block), size, int(offsets.max()) + 1)
            out[picked] = values[offsets]
        return out

    def _block(self, root: str | Path, dataset: str, column: str, block: int, size: int, needed: int) -> np.ndarray:
        key = (str(root), dataset, column, block)
        values = self._blocks.get(key)
        if values is not None and len(values) >= needed:
            self.hits += 1
            self._blocks.move_to_end(key)
            return values
        self.misses += 1
        start = block * size
        store = self._partition(root)
        if store.committed_rows(dataset) < start + needed:
            store.refresh()  # a reader in a worker: the learner's rows were committed after it last looked
        values = store.read(dataset, [column], start, start + size)[column]
        if len(values) < needed:
            raise IndexError(
                f"{column}: rows up to {start + needed} asked of dataset {dataset}, {start + len(values)} committed"
            )
        self._keep(key, values)
        return values

    def _keep(self, key: tuple[str, str, str, int], values: np.ndarray) -> None:
        old = self._blocks.pop(key, None)
        self.bytes -= 0 if old is None else old.nbytes
        if values.nbytes > self.max_bytes:
            return  # bigger than the whole cache: used once, not kept
        while self._blocks and self.bytes + values.nbytes > self.max_bytes:
            _, dropped = self._blocks.popitem(last=False)
            self.bytes -= dropped.nbytes
        self._blocks[key] = values
        self.bytes += values.nbytes
        self.peak_bytes = max(self.peak_bytes, self.bytes)


@dataclass(frozen=True)
class Request:
    """One batch's large columns: for each key, ``column``'s values at ``rows`` of ``dataset``."""

    dataset: str
    parts: tuple[tuple[str, str, np.ndarray], ...]  # (batch key, store column, store rows)


@dataclass(frozen=True)
class _LocatedRequest:
    """A ``Request`` with its rows named by partition: what a loader worker, which numbers no union, can read."""

    dataset: str
    parts: tuple[tuple[str, str, int, list[Located]], ...]  # (batch key, store column, row count, where they are)


class _StoreRows(Dataset):
    """Answers located requests; in a DataLoader worker it opens the partitions it is sent to (stores do not
    pickle)."""

    def __init__(self, store: Rows, cache_bytes: int) -> None:
        self.chunk_rows, self.cache_bytes = store.chunk_rows, cache_bytes
        self.cache: FrameCache | None = FrameCache(store, cache_bytes)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": None}

    def __getitem__(self, request: _LocatedRequest) -> dict[str, np.ndarray]:
        if self.cache is None:
            self.cache = FrameCache(None, self.cache_bytes, self.chunk_rows)
        return {
            key: self.cache.located_rows(request.dataset, column, count, located)
            for key, column, count, located in request.parts
        }


class _Requests(Sampler):
    """The current round's requests; a persistent DataLoader iterates it afresh every round."""

    def __init__(self) -> None:
        self.items: list[Request] = []

    def __iter__(self) -> Iterator[Request]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class FrameStream:
    """Fetches batches' large columns for the learner (see the module docstring)."""

    def __init__(self, store: Rows, cache_bytes: int = 256 << 20, workers: int = 0) -> None:
        self.store = store
        # a daemonic process may not start children, and the cloud's learner process is one: decode in its thread
        self._unstarted = workers if workers and multiprocessing.current_process().daemon else 0
        self.workers = 0 if self._unstarted else workers
        self._rows = _StoreRows(store, cache_bytes // max(1, self.workers))
        self._requests = _Requests()
        self._loader: DataLoader | None = None

    @property
    def cache(self) -> FrameCache | None:
        """The learner thread's cache (None: the workers hold theirs)."""
        return self._rows.cache if self.workers == 0 else None

    def fetch(self, requests: list[Request]) -> Iterator[dict[str, torch.Tensor]]:
        """Each request's values as tensors, in order."""
        located = [self._locate(request) for request in requests]
        if self._unstarted:
            log.info("camera frames are decoded in the learner's thread: its process may not start loader workers")
            self._unstarted = 0
        if self.workers == 0:
            for request in located:
                yield {k: torch.from_numpy(v) for k, v in self._rows[request].items()}
            return
        if self._loader is None:
            self._loader = DataLoader(
                self._rows,
                sampler=self._requests,
                batch_size=None,
                num_workers=self.workers,
                persistent_workers=True,
                multiprocessing_context="spawn",
            )
        self._requests.items = located
        yield from self._loader

    def _locate(self, request: Request) -> _LocatedRequest:
        parts = tuple(
            (key, column, len(rows), self.store.locate(request.dataset, rows)) for key, column, rows in request.parts
        )
        return _LocatedRequest(request.dataset, parts)


@dataclass
class Streamed:
    """The large columns of one round's training rows: ``keys`` maps a batch key to (store column, the store row of
    each training position); ``policies.train`` draws positions and gets the values here."""

    stream: FrameStream
    dataset: str
    keys: dict[str, tuple[str, np.ndarray]]

    def batches(self, indices: Sequence[torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        """Each batch's values (positions ``indices[i]``), in order, fetched ahead of training."""
        requests = [
            Request(self.dataset, tuple((key, col, rows[index.numpy()]) for key, (col, rows) in self.keys.items()))
            for index in indices
        ]
        return self.stream.fetch(requests)

    def sample(self) -> dict[str, np.ndarray]:
        """Up to ``STATS_ROWS`` evenly spaced positions' values: what normalization statistics are fitted on."""
        parts = []
        for key, (column, rows) in self.keys.items():
            parts.append((key, column, rows[np.linspace(0, len(rows) - 1, min(len(rows), STATS_ROWS)).astype(int)]))
        (values,) = list(self.stream.fetch([Request(self.dataset, tuple(parts))]))
        return {key: value.numpy() for key, value in values.items()}
