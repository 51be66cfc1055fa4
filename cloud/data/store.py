"""The episode store: steps of every robot's episodes as zarr v3 arrays, in a local folder or on object storage.

One dataset (a group) per embodiment, one array per column, one row per step. Columns: ``obs.<name>`` (what the
resource observed), ``action``, provenance (``seq``, ``intervention``, ``policy_version``...) and ``meta.<name>``
(what the cloud noted about a step, e.g. ``meta.foresight_error``). A single writer
(the gateway) appends; readers in other processes (the learner) see only committed rows.

Layout under ``root`` (a folder, or ``s3://bucket/prefix``: cloud/data/blobs.py)::

    zarr.json                      root group
    writer.lock                    flock held by the one writer (object storage: writer.lease, writer_hold.py)
    <dataset>/zarr.json            group; attributes hold the column schema
    <dataset>/<column>/            one array per column, chunked along rows, capacity >= committed rows
    <dataset>/<camera>@bytes|@end|@key/   an encoded camera column's packets (cloud/data/video_columns.py)
    <dataset>/episodes.jsonl       episode provenance, one line per episode, in episode_index order
    <dataset>/operators.jsonl      who drove which steps (cloud/data/operators.py)
    <dataset>/labels.jsonl         a person's verdict on an episode and who gave it (cloud/data/labels.py)
    <dataset>/commit.json          {"rows", "episodes", "index_bytes", "operators_bytes", "labels_bytes"}: what a
                                   reader may see

On object storage, which has no append, each commit's new lines of the three .jsonl files are objects of their own
(``episodes.jsonl/<offset>``) and every acknowledged PUT is durable (nothing to fsync).

A write goes: data arrays, then the episodes file, then commit.json (temp file + rename). So the
committed row count and episode index advance only after everything under them is on disk, and a
writer killed mid-write leaves bytes past the commit point that nobody reads and the next write
overwrites. Episode statistics are not stored: they are derived from the committed rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync

from cloud.data import labels, operators, video_columns
from cloud.data.blobs import LocalBlobs, get_json, open_blobs
from cloud.data.columns import (
    NAME,
    STAT_COLUMNS,
    STORE_COLUMNS,
    ColumnSpec,
    create_array,
    normalize_schema,
    open_array,
    rows_per_chunk,
)
from cloud.data.episodes import EpisodeRecord, absorb
from cloud.data.files import fsync_path
from cloud.data.store_views import DatasetViews
from cloud.data.writer_hold import FolderLock, ObjectLease, WriterHold
from protocol.limits import case_twin
from protocol.video import PacketColumn

__all__ = ["NAME", "STORE_COLUMNS", "ColumnSpec", "EpisodeRecord", "EpisodeStore", "StepRows"]

log = logging.getLogger("fleetloop")
STORE_FORMAT = 1


@dataclass
class StepRows:
    """One batch of consecutive steps of one episode, already validated."""

    dataset: str
    episode_id: str
    resource_id: str
    source: str
    task: str
    first_seq: int
    # every schema column but seq/episode_index, leading dim = steps; an encoded camera column as its packets
    columns: dict[str, np.ndarray | PacketColumn]
    operators: tuple[str, ...] = ()  # who drove each step ("" : no person); empty when no person drove any
    label: str = ""  # a person's verdict on the episode, given with its last batch
    labelled_by: str = ""

    @property
    def nbytes(self) -> int:
        """What its columns hold (an encoded camera's packets as sent)."""
        return sum(values.nbytes for values in self.columns.values())


@dataclass
class _Dataset:
    name: str
    schema: dict[str, ColumnSpec]
    rows: int = 0  # committed
    index_bytes: int = 0  # committed length of episodes.jsonl
    operators_bytes: int = 0  # committed length of operators.jsonl
    labels_bytes: int = 0  # committed length of labels.jsonl
    episodes: list[EpisodeRecord] = field(default_factory=list)
    arrays: dict[str, zarr.Array] = field(default_factory=dict)  # by array name (an encoded column has three)
    byte_ends: dict[str, int] = field(default_factory=dict)  # encoded column -> where its committed bytes end


async def _write_columns(writes: list[tuple[zarr.Array, slice, np.ndarray]]) -> None:
    await asyncio.gather(*(array._async_array.setitem(rows, values) for array, rows, values in writes))


def _uncoded(spec: ColumnSpec | None) -> ColumnSpec | None:
    return None if spec is None else replace(spec, codec="")


class EpisodeStore(DatasetViews):
    """Opens or creates the store at ``root`` (a folder or an ``s3://bucket/prefix`` URL); one writer process, any
    number of read_only readers. ``take_over``: a writer on object storage replaces the lease of one that died."""

    def __init__(
        self,
        root: str | Path,
        chunk_rows: int = 256,
        read_only: bool = False,
        durable: bool = True,
        take_over: bool = False,
    ) -> None:
        self._blobs = open_blobs(root)
        self.root: Path | str = self._blobs.root if isinstance(self._blobs, LocalBlobs) else self._blobs.where
        self.chunk_rows = chunk_rows
        self.read_only = read_only
        # durable: fsync data, index and commit before the commit advances, so an ack survives power loss. On object
        # storage a PUT is durable once acknowledged: there is nothing to fsync.
        self.durable = durable and isinstance(self._blobs, LocalBlobs)
        self._lock = threading.RLock()
        self._datasets: dict[str, _Dataset] = {}
        self._episode_of: dict[str, EpisodeRecord] = {}
        self._zstore: zarr.abc.store.Store | None = None
        self._hold: WriterHold | None = None
        self._fsync_pool: ThreadPoolExecutor | None = None
        self.bad_frames = 0  # camera frames read as black because their stored segment did not decode
        if not read_only:
            self._open_writer(take_over)
        self.refresh(_writer_open=True)

    # ---- opening, refreshing ----

    def _open_writer(self, take_over: bool) -> None:
        if isinstance(self._blobs, LocalBlobs):
            self._hold = FolderLock(self._blobs.root)
        else:
            self._hold = ObjectLease(self._blobs, take_over)
        if self._blobs.get("zarr.json") is None:
            zarr.open_group(self._store(), mode="a", attributes={"fleetloop_store": STORE_FORMAT})
        if isinstance(self._blobs, LocalBlobs):
            for stale in self._blobs.root.glob("**/*.partial"):  # zarr's temp files from a write that was killed
                stale.unlink(missing_ok=True)

    def _store(self) -> zarr.abc.store.Store:
        if self._zstore is None:
            self._zstore = self._blobs.zarr_store(self.read_only)
        return self._zstore

    def close(self) -> None:
        if self._hold is not None:
            self._hold.close()  # releases the flock or the lease
            self._hold = None
        if self._fsync_pool is not None:
            self._fsync_pool.shutdown()
            self._fsync_pool = None

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self, _writer_open: bool = False) -> None:
        """Re-reads committed lengths and episode indexes (for readers; the writer already knows them)."""
        if not self.read_only and not _writer_open:
            return
        with self._lock:
            for name in self._blobs.children(""):
                commit = get_json(self._blobs, f"{name}/commit.json")
                if not isinstance(commit, dict):
                    continue
                ds = self._datasets.get(name)
                if ds is None or commit["rows"] < ds.rows or commit["index_bytes"] < ds.index_bytes:
                    ds = self._load_dataset(name)  # new, or recreated under us: start over
                self._catch_up(ds, commit)

    def _load_dataset(self, name: str) -> _Dataset:
        for record in self._datasets.get(name, _Dataset(name, {})).episodes:
            self._episode_of.pop(record.episode_id, None)
        attrs = get_json(self._blobs, f"{name}/zarr.json")["attributes"]
        schema = {col: ColumnSpec.from_json(saved) for col, saved in attrs["schema"].items()}
        ds = self._datasets[name] = _Dataset(name, schema)
        return ds

    def _catch_up(self, ds: _Dataset, commit: dict[str, int]) -> None:
        """Loads the episodes and rows committed since this process last looked."""
        if commit["index_bytes"] > ds.index_bytes:
            lines = self._blobs.read_appended(
                f"{ds.name}/episodes.jsonl", ds.index_bytes, commit["index_bytes"]
            ).splitlines()
            for line in lines:
                meta = json.loads(line)
                record = EpisodeRecord(ds.name, len(ds.episodes), **meta)
                ds.episodes.append(record)
                self._episode_of[record.episode_id] = record
            ds.index_bytes = commit["index_bytes"]
        ds.operators_bytes = commit.get("operators_bytes", 0)  # absent in stores written before it existed
        for said in labels.read(self._blobs, ds.name, ds.labels_bytes, commit.get("labels_bytes", 0)):
            self._label(said["episode_id"], said["outcome"], said["by"])
        ds.labels_bytes = max(ds.labels_bytes, commit.get("labels_bytes", 0))
        block = 1 << 20  # bounds memory when a fresh reader folds a big dataset
        for start in range(ds.rows, commit["rows"], block):
            stop = min(start + block, commit["rows"])
            absorb(ds.episodes, {name: self._array(ds, name, stop)[start:stop] for name in STAT_COLUMNS})
        ds.rows = commit["rows"]

    def _array(self, ds: _Dataset, name: str, rows: int) -> zarr.Array:
        """The array (a raw column's, or one of an encoded column's), reopened when the writer has grown it past
        ``rows`` (a length along its first axis) and this process has not seen that yet."""
        array = ds.arrays.get(name)
        if array is None or array.shape[0] < rows:
            array = ds.arrays[name] = open_array(self._store(), f"{ds.name}/{name}", self.read_only)
        return array

    # ---- schema ----

    def ensure_dataset(self, name: str, schema: dict[str, ColumnSpec]) -> None:
        """Creates the dataset, or checks that its schema matches (ValueError naming the column).

        A camera's codec is fixed when its dataset is created: an existing dataset keeps the codecs it has whatever
        ``schema`` asks (``schema()`` says which they are), so a cloud restarted with another ``--store-codec``
        goes on writing its datasets as before.
        """
        if not NAME.fullmatch(name):
            raise ValueError(f"dataset: {name!r} must be 1-128 letters, digits, '_', '.', '-'")
        with self._lock:
            twin = case_twin(name, self._datasets)
            if twin is not None:  # on a case-insensitive filesystem both would be one folder
                raise ValueError(f"dataset: {name!r} differs only in case from the stored dataset {twin!r}")
            wanted = normalize_schema(schema)
            ds = self._datasets.get(name)
            if ds is not None:
                for column in sorted(set(wanted) | set(ds.schema)):
                    if _uncoded(wanted.get(column)) != _uncoded(ds.schema.get(column)):
                        raise ValueError(
                            f"{column}: dataset {name} stores {ds.schema.get(column)}, got {wanted.get(column)}"
                        )
                return
            self._check_writable()
            self._create(name, wanted)

    def _create(self, name: str, schema: dict[str, ColumnSpec]) -> None:
        # commit.json comes last: a dataset whose creation was cut short is invisible and created again.
        store = self._store()
        as_json = {col: spec.to_json() for col, spec in schema.items()}
        zarr.open_group(store, path=name, mode="w", attributes={"schema": as_json})
        ds = _Dataset(name, schema)
        for col, spec in schema.items():
            if spec.codec:
                ds.arrays.update(video_columns.create(store, name, col, self.chunk_rows))
            else:
                shape = (rows_per_chunk(spec, self.chunk_rows), *spec.shape)
                ds.arrays[col] = create_array(store, f"{name}/{col}", spec.dtype, shape)
        self._blobs.append(f"{name}/episodes.jsonl", 0, b"")
        if self.durable:
            folder = Path(self.root) / name
            paths = [Path(self.root), folder, folder / "zarr.json", folder / "episodes.jsonl"]
            self._fsync([*paths, *(folder / a for a in ds.arrays), *(folder / a / "zarr.json" for a in ds.arrays)])
        self._blobs.put(f"{name}/commit.json", self._commit_bytes(ds), self.durable, self.durable)
        self._datasets[name] = ds

    def _check_writable(self) -> None:
        if self.read_only or self._hold is None:
            raise PermissionError(f"the episode store at {self.root} is open read_only or closed")

    # ---- episodes ----

    def row_indices(self, dataset: str, episode_id: str) -> np.ndarray:
        """Committed rows of one episode, in seq order (an episode's rows interleave with others')."""
        record = self._episode_of.get(episode_id)
        if record is None or record.dataset != dataset:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.read(dataset, ["episode_index"])["episode_index"] == record.index)

    def drivers(self, dataset: str, episode_id: str) -> dict[int, str]:
        """seq -> who for the committed steps of an episode that a person drove (the policy's steps are absent)."""
        return operators.drivers(self._blobs, dataset, self._get(dataset).operators_bytes, episode_id)

    # ---- rows ----

    def locate(self, dataset: str, rows: np.ndarray) -> list[tuple[Path | str, np.ndarray, np.ndarray]]:
        """(partition root, its rows, positions in ``rows``), as ``StoreUnion.locate``: here all rows are this one's."""
        return [(self.root, np.asarray(rows, np.int64), np.arange(len(rows)))]

    def partition_store(self, root: Path | str) -> EpisodeStore:
        return self

    def read(
        self, dataset: str, columns: list[str] | None = None, start: int = 0, stop: int | None = None
    ) -> dict[str, np.ndarray]:
        """Committed rows [start, stop) of the given columns (all by default).

        An encoded camera column reads as decoded frames (rows, H, W, 3) uint8. A segment of it that does not
        decode (stored packets come from devices) reads as black frames, is added to ``bad_frames`` and logged
        naming the dataset, column and rows: a reader such as the learner keeps going.
        """
        ds = self._get(dataset)
        start, stop = self._bounds(ds, start, stop)
        names = list(ds.schema) if columns is None else columns
        for name in names:
            if name not in ds.schema:
                raise KeyError(f"{name}: not a column of dataset {dataset}")
        return {name: self._read_column(ds, name, start, stop) for name in names}

    def read_packets(self, dataset: str, column: str, start: int = 0, stop: int | None = None) -> PacketColumn:
        """Committed rows [start, stop) of an encoded camera column as stored: one packet per row, in row order
        (episodes interleave; ``episode_index`` says whose each row is). Nothing is decoded or checked."""
        ds = self._get(dataset)
        spec = ds.schema.get(column)
        if spec is None or not spec.codec:
            raise KeyError(f"{column}: not an encoded camera column of dataset {dataset}")
        start, stop = self._bounds(ds, start, stop)
        return video_columns.read_packets(self._array_of(ds), column, spec.codec, start, stop)

    @staticmethod
    def _bounds(ds: _Dataset, start: int, stop: int | None) -> tuple[int, int]:
        rows = ds.rows  # one snapshot for every column
        stop = rows if stop is None else max(0, min(stop, rows))
        return max(0, min(start, stop)), stop

    def _array_of(self, ds: _Dataset) -> video_columns.ArrayOf:
        return lambda name, length: self._array(ds, name, length)

    def _read_column(self, ds: _Dataset, name: str, start: int, stop: int) -> np.ndarray:
        spec = ds.schema[name]
        if not spec.codec:
            return self._array(ds, name, stop)[start:stop]
        decoded = video_columns.decode_rows(self._array_of(ds), name, spec, start, stop)
        if decoded.bad_rows:
            with self._lock:
                self.bad_frames += len(decoded.bad_rows)
            log.warning(
                "store: dataset %s, camera %s: %d frames did not decode and read as black (%s)",
                ds.name,
                name,
                len(decoded.bad_rows),
                "; ".join(decoded.reasons[:3]),
            )
        return decoded.frames

    def write(self, batches: list[StepRows], continues: Mapping[str, int] | None = None) -> dict[str, int]:
        """Group commit of batches; rows already stored are skipped. Returns episode_id -> next_seq (the ack).

        ``continues``: where episodes continue whose earlier rows are in another partition of a shared store
        (``cloud.data.partitions``): their rows before that seq are skipped as stored, and a batch may start there
        although this store holds none (or fewer) of the episode's rows."""
        self._check_writable()
        continues = continues or {}
        with self._lock:
            plan: dict[str, list[tuple[StepRows, int]]] = {}
            expected: dict[str, int] = {}
            owner: dict[str, tuple[str, str]] = {}
            for batch in batches:
                ds = self._get(batch.dataset)
                steps = self._check_batch(ds, batch)
                record = self._episode_of.get(batch.episode_id)
                known = (record.dataset, record.resource_id) if record else owner.get(batch.episode_id)
                if known is not None and known != (batch.dataset, batch.resource_id):
                    raise ValueError(
                        f"resource_id: episode {batch.episode_id} belongs to {known[1]} in {known[0]}, "
                        f"not to {batch.resource_id} in {batch.dataset}"
                    )
                owner[batch.episode_id] = (batch.dataset, batch.resource_id)
                next_seq = expected.get(
                    batch.episode_id, max(self.next_seq(batch.episode_id), continues.get(batch.episode_id, 0))
                )
                if batch.first_seq > next_seq:
                    raise ValueError(
                        f"first_seq: episode {batch.episode_id} continues at seq {next_seq}, got {batch.first_seq}"
                    )
                skip = next_seq - batch.first_seq  # redelivered rows
                expected[batch.episode_id] = max(next_seq, batch.first_seq + steps)
                if skip < steps:
                    plan.setdefault(ds.name, []).append((batch, skip))
            for name, items in plan.items():
                self._append(self._datasets[name], items)
            return {b.episode_id: max(self.next_seq(b.episode_id), expected[b.episode_id]) for b in batches}

    def check(self, batch: StepRows, to_encode: Collection[str] = ()) -> None:
        """Raises ValueError (naming the field) if ``write`` would refuse the batch by itself: unknown dataset,
        columns, shapes, dtypes, encoded frames' form. ``to_encode``: encoded columns the caller encodes before the
        write, checked as raw frames. Whether the batch's seq and resource fit is the writer's to check."""
        try:
            ds = self._get(batch.dataset)
        except KeyError as err:
            raise ValueError(str(err.args[0])) from None
        raw = {name for name in to_encode if isinstance(batch.columns.get(name), np.ndarray)}
        self._check_batch(ds, batch, raw)

    def _check_batch(self, ds: _Dataset, batch: StepRows, raw: Collection[str] = ()) -> int:
        missing = sorted(set(ds.schema) - set(batch.columns) - set(STORE_COLUMNS))
        extra = sorted((set(batch.columns) - set(ds.schema)) | (set(batch.columns) & set(STORE_COLUMNS)))
        if missing or extra:
            raise ValueError(f"{(missing + extra)[0]}: batch columns do not match dataset {ds.name}")
        if batch.first_seq < 0:
            raise ValueError(f"first_seq: must be >= 0, got {batch.first_seq}")
        steps = len(batch.columns["action"])
        for name, values in batch.columns.items():
            spec = _uncoded(ds.schema[name]) if name in raw else ds.schema[name]
            video_columns.check(name, spec, values, steps)
            if spec.codec:
                continue
            if values.shape != (steps, *spec.shape) or not np.can_cast(values.dtype, spec.dtype, "same_kind"):
                raise ValueError(f"{name}: expected {spec} with {steps} rows, got {values.dtype} {values.shape}")
        return steps

    def _new_episodes(
        self, ds: _Dataset, items: list[tuple[StepRows, int]]
    ) -> tuple[list[EpisodeRecord], dict[str, int]]:
        """Records of the episodes these batches start, and every batch's episode_index."""
        new: list[EpisodeRecord] = []
        index_of: dict[str, int] = {}
        for batch, _ in items:
            record = self._episode_of.get(batch.episode_id)
            if record is not None:
                index_of[batch.episode_id] = record.index
            elif batch.episode_id not in index_of:
                index_of[batch.episode_id] = len(ds.episodes) + len(new)
                new.append(
                    EpisodeRecord(
                        ds.name,
                        index_of[batch.episode_id],
                        batch.episode_id,
                        batch.resource_id,
                        batch.source,
                        batch.task,
                    )
                )
        return new, index_of

    @staticmethod
    def _gather(
        ds: _Dataset, items: list[tuple[StepRows, int]], index_of: dict[str, int]
    ) -> dict[str, np.ndarray | PacketColumn]:
        """Every column's new rows, batches one after another."""
        data: dict[str, np.ndarray | PacketColumn] = {}
        for name, spec in ds.schema.items():
            if name == "seq":
                parts = [np.arange(b.first_seq + skip, b.first_seq + len(b.columns["action"])) for b, skip in items]
            elif name == "episode_index":
                parts = [np.full(len(b.columns["action"]) - skip, index_of[b.episode_id]) for b, skip in items]
            elif spec.codec:
                data[name] = video_columns.concat([b.columns[name][skip:] for b, skip in items])
                continue
            else:
                parts = [b.columns[name][skip:] for b, skip in items]
            data[name] = np.concatenate(parts).astype(spec.dtype, copy=False)
        return data

    def _writes(
        self, ds: _Dataset, data: dict[str, np.ndarray | PacketColumn], start: int, stop: int
    ) -> list[tuple[str, slice, np.ndarray]]:
        """(array, where, values) for every array the rows [start, stop) go to."""
        out: list[tuple[str, slice, np.ndarray]] = []
        for name, values in data.items():
            if isinstance(values, PacketColumn):
                if name not in ds.byte_ends:  # first write since the store was opened
                    ds.byte_ends[name] = video_columns.byte_end(self._array_of(ds), name, ds.rows)
                out += video_columns.writes(name, values, slice(start, stop), ds.byte_ends[name])
            else:
                out.append((name, slice(start, stop), values))
        return out

    def _append(self, ds: _Dataset, items: list[tuple[StepRows, int]]) -> None:
        new, index_of = self._new_episodes(ds, items)
        data = self._gather(ds, items, index_of)
        start, stop = ds.rows, ds.rows + len(data["seq"])
        writes = self._writes(ds, data, start, stop)

        grown = self._grow(ds, {name: where.stop for name, where, _ in writes})
        # one write per array, all at once: zarr encodes chunks in threads meanwhile
        sync(_write_columns([(self._array(ds, name, 0), where, values) for name, where, values in writes]))
        index_bytes = ds.index_bytes
        if new:
            lines = b"".join(
                json.dumps(
                    {"episode_id": r.episode_id, "resource_id": r.resource_id, "source": r.source, "task": r.task}
                ).encode()
                + b"\n"
                for r in new
            )
            # drops what a killed writer appended past the commit
            index_bytes = self._blobs.append(f"{ds.name}/episodes.jsonl", ds.index_bytes, lines)
        operators_bytes, labels_bytes = self._append_people(ds, items)
        if self.durable:
            self._fsync_rows(ds, {name: where for name, where, _ in writes}, metadata=grown)
        commit = {"rows": stop, "episodes": len(ds.episodes) + len(new), "index_bytes": index_bytes}
        commit.update(operators_bytes=operators_bytes, labels_bytes=labels_bytes)
        self._hold.check()  # a writer whose store was taken over never commits beside the new one
        self._blobs.put(f"{ds.name}/commit.json", json.dumps(commit).encode(), self.durable, self.durable)

        # committed: now the in-memory view may move on
        ds.episodes.extend(new)
        for record in new:
            self._episode_of[record.episode_id] = record
        ds.index_bytes, ds.operators_bytes, ds.labels_bytes = index_bytes, operators_bytes, labels_bytes
        for batch in (b for b, _ in items if b.label):
            self._label(batch.episode_id, batch.label, batch.labelled_by)
        absorb(ds.episodes, {name: data[name] for name in STAT_COLUMNS})
        for name, where, _ in writes:
            if name.endswith(video_columns.BYTES):
                ds.byte_ends[name.removesuffix(video_columns.BYTES)] = where.stop
        ds.rows = stop

    def _append_people(self, ds: _Dataset, items: list[tuple[StepRows, int]]) -> tuple[int, int]:
        """Appends who drove these rows and a person's labels on them; the two files' lengths for the commit."""
        runs = b"".join(operators.run_lines(b.episode_id, b.first_seq, b.operators, skip) for b, skip in items)
        said = b"".join(
            labels.line(b.episode_id, b.first_seq + len(b.columns["action"]) - 1, b.label, b.labelled_by)
            for b, _ in items
            if b.label
        )
        operators_bytes = (
            operators.append_runs(self._blobs, ds.name, ds.operators_bytes, runs) if runs else ds.operators_bytes
        )
        labels_bytes = labels.append(self._blobs, ds.name, ds.labels_bytes, said) if said else ds.labels_bytes
        return operators_bytes, labels_bytes

    def _label(self, episode_id: str, outcome: str, by: str) -> None:
        record = self._episode_of.get(episode_id)
        if record is not None:
            record.label, record.labelled_by = outcome, by

    def _grow(self, ds: _Dataset, lengths: dict[str, int]) -> bool:
        """Doubles capacity so array metadata is rewritten rarely, not on every write; True if it grew."""
        grown = False
        for name, length in lengths.items():
            array = self._array(ds, name, 0)
            if array.shape[0] < length:
                array.resize((max(length, 2 * array.shape[0], array.chunks[0]), *array.shape[1:]))
                grown = True
        return grown

    def _fsync_rows(self, ds: _Dataset, written: dict[str, slice], metadata: bool) -> None:
        """Flushes the chunks under what was written to each array, their directories, the episodes file, resized
        metadata."""
        folder = Path(self.root) / ds.name
        paths = [folder / name for name in ("episodes.jsonl", operators.FILE, labels.FILE)]
        for name, where in written.items():
            array = self._array(ds, name, 0)
            step, tail = array.chunks[0], ".0" * (array.ndim - 1)
            directory = folder / name
            chunks = range(where.start // step, (where.stop - 1) // step + 1)
            paths += [directory / f"c.{chunk}{tail}" for chunk in chunks]
            paths.append(directory)  # the renames of chunk files and zarr.json
            if metadata:
                paths.append(directory / "zarr.json")
        self._fsync(paths)

    def _fsync(self, paths: list[Path]) -> None:
        if self._fsync_pool is None:
            self._fsync_pool = ThreadPoolExecutor(16, thread_name_prefix="store-fsync")
        # concurrent fsyncs share journal commits: 25 of them took ~100 ms in a row and ~8 ms at once here
        list(self._fsync_pool.map(fsync_path, paths))

    @staticmethod
    def _commit_bytes(ds: _Dataset) -> bytes:
        return json.dumps({"rows": ds.rows, "episodes": len(ds.episodes), "index_bytes": ds.index_bytes}).encode()
