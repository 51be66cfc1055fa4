"""The episode store's columns: what a dataset's schema may hold and how each column's zarr array is laid out.

A column is raw (an array with one row per step) or, for a camera, encoded (``codec`` "h264", "av1" or "jpeg":
the packets of cloud/data/video_columns.py). The schema is saved in the dataset group's attributes as
``{column: [dtype, shape]}`` for raw columns and ``[dtype, shape, codec]`` for encoded ones, so stores written
before codecs existed read as raw.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from protocol.arrays import CodecError
from protocol.steps import PROVENANCE_COLUMNS
from protocol.video import CODECS, CameraDecoder

# The provenance every step carries (the wire's contract), plus what the store adds to each row.
FIXED_COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {
    "seq": ("<i8", ()),
    "episode_index": ("<i8", ()),
    **PROVENANCE_COLUMNS,
}
STORE_COLUMNS = ("seq", "episode_index")  # filled in by the store, not by the writer's batches
STAT_COLUMNS = ["episode_index", "seq", "intervention", "success", "done", "policy_version"]
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # always matched whole
TARGET_CHUNK_BYTES = 2 << 20  # 1-4 MB chunks write fast; bigger ones make every partial-chunk append costly
# Runtime config, not saved in the metadata: every open must pass it again. Writing chunks that hold only
# the fill value skips a scan of each chunk and keeps "every touched chunk exists" true for the fsync of rows.
ARRAY_CONFIG = {"write_empty_chunks": True}
# zarr 3.4's opt-in synchronous pipeline: one thread hop per write instead of a coroutine per chunk step;
# it halved the time of a 64-row append to a small column here. It is picked from the global config when
# an array is opened, so the lock keeps two threads' config.set blocks from restoring each other's values.
FUSED = {"codec_pipeline.path": "zarr.core.codec_pipeline.FusedCodecPipeline"}
ZARR_CONFIG_LOCK = threading.Lock()


@dataclass(frozen=True)
class ColumnSpec:
    dtype: str  # numpy dtype string, e.g. "<f4"
    shape: tuple[int, ...]  # per-row shape
    codec: str = ""  # "" raw; "h264" / "av1" / "jpeg": an encoded camera (dtype uint8, shape (H, W, 3))

    def to_json(self) -> list[Any]:
        as_json: list[Any] = [self.dtype, list(self.shape)]
        return [*as_json, self.codec] if self.codec else as_json

    @staticmethod
    def from_json(saved: list[Any]) -> ColumnSpec:
        """A column as the dataset's attributes hold it; no codec (a store from before codecs) means raw."""
        return ColumnSpec(saved[0], tuple(saved[1]), saved[2] if len(saved) > 2 else "")


def _check_codec(name: str, spec: ColumnSpec) -> None:
    if spec.codec not in CODECS:
        raise ValueError(f"{name}: codec must be '' (raw) or one of {', '.join(CODECS)}, got {spec.codec!r}")
    if not name.startswith("obs.") or spec.dtype != "|u1" or len(spec.shape) != 3 or spec.shape[2] != 3:
        raise ValueError(f"{name}: only an RGB camera (obs.<name>, uint8 HxWx3) is stored encoded, got {spec}")
    try:
        CameraDecoder(spec.codec, spec.shape[1], spec.shape[0], camera=name)  # checks the sizes the codec takes
    except CodecError as err:
        raise ValueError(str(err)) from err


def normalize_schema(schema: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
    """Checks a schema and returns it with the store's columns, dtypes as numpy strings."""
    fixed = {name: ColumnSpec(dtype, shape) for name, (dtype, shape) in FIXED_COLUMNS.items()}
    out = {name: fixed[name] for name in STORE_COLUMNS}
    for name, spec in schema.items():
        prefix, _, rest = name.partition(".")
        if not (name in FIXED_COLUMNS or name == "action" or (prefix in ("obs", "meta") and NAME.fullmatch(rest))):
            raise ValueError(
                f"{name}: not a column of an episode dataset (fixed columns, 'action', 'obs.<name>' or 'meta.<name>')"
            )
        try:
            normal = ColumnSpec(np.dtype(spec.dtype).str, tuple(int(d) for d in spec.shape), spec.codec)
        except TypeError as err:
            raise ValueError(f"{name}: bad dtype {spec.dtype!r}") from err
        if normal.dtype[1] not in "biuf" or any(d < 1 for d in normal.shape):
            raise ValueError(f"{name}: needs a numeric dtype and positive dims, got {normal}")
        if name in fixed and normal != fixed[name]:
            raise ValueError(f"{name}: must be {fixed[name]}, got {normal}")
        if normal.codec:
            _check_codec(name, normal)
        out[name] = normal
    for name in [*fixed, "action"]:
        if name not in out:
            raise ValueError(f"{name}: missing from the schema")
    return out


def rows_per_chunk(spec: ColumnSpec, chunk_rows: int) -> int:
    row_bytes = np.dtype(spec.dtype).itemsize * int(np.prod(spec.shape, dtype=np.int64))
    rows = max(1, min(chunk_rows, TARGET_CHUNK_BYTES // row_bytes))
    return 1 << (rows.bit_length() - 1)  # a power of two, so power-of-two batches fill whole chunks


def compressor(dtype: str) -> BloscCodec:
    # lz4 at level 1 keeps up with the disk (zstd-1 ran at a third of its speed on 96x96 images); shuffle
    # groups the bytes of multi-byte numbers, which is what makes floats and ints compress.
    itemsize = np.dtype(dtype).itemsize
    return BloscCodec(cname="lz4", clevel=1, shuffle="shuffle" if itemsize > 1 else "noshuffle", typesize=itemsize)


def create_array(
    store: zarr.abc.store.Store, path: str, dtype: str, chunks: tuple[int, ...], compressed: bool = True
) -> zarr.Array:
    """An empty array growing along its first axis; an existing one at ``path`` is replaced."""
    with ZARR_CONFIG_LOCK, zarr.config.set(FUSED):
        return zarr.create_array(
            store,
            name=path,
            shape=(0, *chunks[1:]),
            chunks=chunks,
            dtype=dtype,
            fill_value=0,
            compressors=[compressor(dtype)] if compressed else None,
            # one directory per column (no c/<i>/0/0 trees): fewer dirs to create and fsync
            chunk_key_encoding={"name": "default", "separator": "."},
            config=ARRAY_CONFIG,
            overwrite=True,
        )


def open_array(store: zarr.abc.store.Store, path: str, read_only: bool) -> zarr.Array:
    with ZARR_CONFIG_LOCK, zarr.config.set(FUSED):
        return zarr.open_array(store, path=path, mode="r" if read_only else "r+", config=ARRAY_CONFIG)
