"""The learner's step index: per dataset, the small columns of every committed row, each row read once.

``StepIndex.table`` gives what ``cloud.learning.sampler.load_steps`` gives, but reads from the store only the rows
committed since its last call (and a column asked for the first time, once, for the rows already held). What can
change about a row after it is committed is not in its columns but in the store's episode records, taken afresh at
every call: a person's label (a discarded episode) arrives with a later batch; an episode's source (offline data)
is fixed when it starts. ``meta.*`` columns such as ``meta.foresight_error`` are written with their rows (the phone
channel scores an episode before storing it) and never rewritten, so they are appended like any other column. A
row's successor (``next_row``) can arrive later: the last held row of every episode is linked when it does.

Large columns (an encoded camera, or any column over ``large_row_bytes`` per row: raw camera frames) are never held:
the table names them in ``StepTable.streamed`` and training fetches the rows it draws (``cloud.learning.streaming``).

What it costs: the provenance is 43 B per row (episode_index, seq, policy_version, next_row: 8 each; intervention,
done, success, kind, terminal: 1 each) plus the small columns asked for (a 21-float state and a 4-float action:
100 B), about 140 MB per million steps, held for the learner's lifetime. Each call also makes a few passes over the
held arrays (discarded and offline episodes, the view cut at ``rows``): milliseconds per 100k rows, no store read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cloud.data.store import ColumnSpec, EpisodeStore
from cloud.learning.sampler import NEEDED, OFFLINE, StepTable, link_successors, marked_episodes, step_kinds
from cloud.serving.foresight import ERROR_COLUMN

READ_BLOCK_ROWS = 1 << 16  # rows per store read: bounds what one read holds beside the index


class _Growing:
    """An array appended to along its first axis; capacity doubles, so appending costs O(new rows) amortized."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], fill: int = 0) -> None:
        self.data = np.full((0, *shape), fill, dtype)
        self.fill = fill
        self.size = 0

    def reserve(self, size: int) -> None:
        if size > len(self.data):
            grown = np.full((max(size, 2 * len(self.data), 1024), *self.data.shape[1:]), self.fill, self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown

    def extend(self, values: np.ndarray) -> None:
        self.reserve(self.size + len(values))
        self.data[self.size : self.size + len(values)] = values
        self.size += len(values)

    def view(self, rows: int | None = None) -> np.ndarray:
        return self.data[: self.size if rows is None else rows]


@dataclass
class _Held:
    """One dataset's held rows ``[0, rows)``."""

    columns: dict[str, _Growing] = field(default_factory=dict)
    kind: _Growing = field(default_factory=lambda: _Growing(np.dtype(np.int8), ()))  # before offline marks
    terminal: _Growing = field(default_factory=lambda: _Growing(np.dtype(bool), ()))
    next_row: _Growing = field(default_factory=lambda: _Growing(np.dtype(np.int64), (), -1))
    tail: _Growing = field(default_factory=lambda: _Growing(np.dtype(np.int64), (), -1))  # episode -> last row
    rows: int = 0


class StepIndex:
    """Per dataset, what sampling needs of every committed row and the small columns asked for, grown each call."""

    def __init__(self, store: EpisodeStore, large_row_bytes: int = 4096) -> None:
        self.store = store
        self.large_row_bytes = large_row_bytes
        self.rows_read = 0  # rows read from the store, over every column read: what a round costs in reads
        self._held: dict[str, _Held] = {}

    def held_bytes(self) -> int:
        """What the index holds, over every dataset (its arrays' capacity)."""
        arrays = [a for held in self._held.values() for a in (*held.columns.values(), held.kind, held.terminal)]
        arrays += [a for held in self._held.values() for a in (held.next_row, held.tail)]
        return sum(a.data.nbytes for a in arrays)

    def is_large(self, spec: ColumnSpec) -> bool:
        """Whether a column is fetched per batch rather than held: encoded, or over ``large_row_bytes`` a row."""
        row_bytes = np.dtype(spec.dtype).itemsize * int(np.prod(spec.shape, dtype=np.int64))
        return bool(spec.codec) or row_bytes > self.large_row_bytes

    def table(
        self, dataset: str, columns: list[str], rows: int | None = None, offline_sources: tuple[str, ...] = ()
    ) -> StepTable:
        """``load_steps``' table of rows ``[0, rows)`` (all committed by default); large columns in ``streamed``."""
        schema = self.store.schema(dataset)
        for name in columns:
            if name not in schema:
                raise KeyError(f"{name}: not a column of dataset {dataset}")
        streamed = {name: schema[name] for name in columns if self.is_large(schema[name])}
        scored = ERROR_COLUMN in schema
        small = [
            n for n in dict.fromkeys([*NEEDED, *columns, *([ERROR_COLUMN] if scored else [])]) if n not in streamed
        ]
        held = self._catch_up(dataset, small, rows)
        n = held.rows if rows is None else min(rows, held.rows)
        data = {name: held.columns[name].view(n) for name in small}
        foresight_error = data.pop(ERROR_COLUMN) if scored and ERROR_COLUMN not in columns else data.get(ERROR_COLUMN)
        next_row = held.next_row.view(n)
        next_row = np.where(next_row < n, next_row, -1)  # successors past the rows asked for are not there yet
        kind = held.kind.view(n).copy()
        offline, discarded = marked_episodes(self.store, dataset, offline_sources)
        if offline:
            kind[np.isin(data["episode_index"], offline)] = OFFLINE
        marked = np.isin(data["episode_index"], discarded)
        return StepTable(dataset, data, kind, next_row, held.terminal.view(n), foresight_error, marked, streamed)

    def _catch_up(self, dataset: str, names: list[str], rows: int | None) -> _Held:
        """Reads the rows committed since the last call (up to ``rows``) and new columns' older rows."""
        committed = self.store.committed_rows(dataset)
        held = self._held.get(dataset)
        if held is None or committed < held.rows:  # new, or the dataset was recreated under us: start over
            held = self._held[dataset] = _Held()
        schema = self.store.schema(dataset)
        for name in names:
            if name not in held.columns:
                spec = schema[name]
                held.columns[name] = _Growing(np.dtype(spec.dtype), spec.shape)
                self._read_into(dataset, {name: held.columns[name]}, 0, held.rows)
        stop = committed if rows is None else max(held.rows, min(rows, committed))
        for start in range(held.rows, stop, READ_BLOCK_ROWS):
            end = min(start + READ_BLOCK_ROWS, stop)
            self._read_into(dataset, held.columns, start, end)
            self._derive(held, start, end)
            held.rows = end
        return held

    def _read_into(self, dataset: str, columns: dict[str, _Growing], start: int, stop: int) -> None:
        for first in range(start, stop, READ_BLOCK_ROWS):
            last = min(first + READ_BLOCK_ROWS, stop)
            for name, values in self.store.read(dataset, list(columns), first, last).items():
                columns[name].extend(values)
                self.rows_read += len(values)

    @staticmethod
    def _derive(held: _Held, start: int, stop: int) -> None:
        """Kinds, terminals and successor links of the new rows ``[start, stop)`` (and of older episodes' tails)."""
        col = {name: held.columns[name].view(stop)[start:stop] for name in NEEDED}
        done = col["done"].astype(bool)
        held.kind.extend(step_kinds(col["intervention"], col["policy_version"]))
        held.terminal.extend(done & col["success"].astype(bool))
        held.next_row.reserve(stop)
        held.next_row.size = stop
        episodes = col["episode_index"]
        held.tail.reserve(int(episodes.max()) + 1)
        held.tail.size = max(held.tail.size, int(episodes.max()) + 1)
        tails = held.tail.view()[np.unique(episodes)]
        tails = tails[tails >= 0]
        candidates = np.concatenate([tails, np.arange(start, stop)])
        all_episodes, all_seq = held.columns["episode_index"].view(stop), held.columns["seq"].view(stop)
        next_row = held.next_row.view()
        link_successors(next_row, candidates, all_episodes[candidates], all_seq[candidates])
        ended = candidates[held.columns["done"].view(stop)[candidates].astype(bool)]
        next_row[ended] = -1  # a done step has no next observation, whatever follows it
        np.maximum.at(held.tail.data, episodes, np.arange(start, stop))
