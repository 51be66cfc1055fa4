"""Encoded camera columns in the episode store: packets in plain zarr arrays, read back as frames.

An encoded column ``obs.<cam>`` (``ColumnSpec.codec`` "h264", "av1" or "jpeg") is three arrays::

    obs.<cam>@bytes   uint8, 1-D: every row's packet, concatenated in row order (uncompressed: video is)
    obs.<cam>@end     int64 per row: where row i's packet ends in @bytes (row i = bytes[end[i-1]:end[i]])
    obs.<cam>@key     bool per row: whether row i's packet is a keyframe (a segment that decodes alone starts there)

The row commit covers all three: bytes past ``end[rows - 1]`` are what a killed writer left and the next write
overwrites, as rows past the commit are for raw columns. Rows of different episodes interleave in the store;
each episode is its own video stream (an encoder per camera per episode), so a frame decodes from its
episode's keyframe at or before it, through that episode's rows only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zarr

from cloud.data.columns import ColumnSpec, create_array, rows_per_chunk
from protocol.arrays import CodecError
from protocol.video import CameraDecoder, Packet, PacketColumn

log = logging.getLogger("fleetloop")

BYTES, END, KEY = "@bytes", "@end", "@key"
# Smaller than raw columns' chunks: every group commit rewrites the partly filled last chunk of @bytes, and a
# reader fetching one segment (a few kB of H.264) reads whole chunks.
BYTES_CHUNK = 1 << 19
FIRST_LOOKBACK_ROWS = 1024  # rows searched back for a keyframe at first; doubled until one is found

ArrayOf = Callable[[str, int], zarr.Array]  # (array name, length it must have) -> the array


def array_names(column: str, spec: ColumnSpec) -> list[str]:
    """The zarr arrays a column is stored in."""
    return [column + part for part in (BYTES, END, KEY)] if spec.codec else [column]


def create(store: zarr.abc.store.Store, dataset: str, column: str, chunk_rows: int) -> dict[str, zarr.Array]:
    """The empty arrays of an encoded column."""
    rows = rows_per_chunk(ColumnSpec("<i8", ()), chunk_rows)
    return {
        column + BYTES: create_array(store, f"{dataset}/{column}{BYTES}", "|u1", (BYTES_CHUNK,), compressed=False),
        column + END: create_array(store, f"{dataset}/{column}{END}", "<i8", (rows,)),
        column + KEY: create_array(store, f"{dataset}/{column}{KEY}", "|b1", (rows,)),
    }


def check(column: str, spec: ColumnSpec, values: object, steps: int) -> None:
    """Refuses what a batch gives for a column that does not match how the dataset stores it (ValueError)."""
    if not spec.codec:
        if isinstance(values, PacketColumn):
            raise ValueError(f"{column}: dataset stores raw frames, got {values.codec} packets")
        return
    if not isinstance(values, PacketColumn):
        raise ValueError(
            f"{column}: dataset stores this camera as {spec.codec} video; a batch must give its packets "
            f"(a PacketColumn), not {type(values).__name__} (encoding raw frames is the gateway's job)"
        )
    if values.codec != spec.codec:
        raise ValueError(f"{column}: dataset stores {spec.codec} video, got {values.codec} packets")
    if len(values) != steps:
        raise ValueError(f"{column}: {len(values)} packets for {steps} steps")


def concat(parts: list[PacketColumn]) -> PacketColumn:
    packets = tuple(packet for part in parts for packet in part.packets)
    keyframe = np.concatenate([part.keyframe for part in parts]).astype(bool) if parts else np.zeros(0, bool)
    return PacketColumn(parts[0].codec, packets, keyframe)


def writes(column: str, packets: PacketColumn, rows: slice, byte_start: int) -> list[tuple[str, slice, np.ndarray]]:
    """The array writes that append ``packets`` at ``rows``, their bytes from ``byte_start`` (the committed end)."""
    lengths = np.fromiter((len(p) for p in packets.packets), np.int64, len(packets))
    ends = byte_start + np.cumsum(lengths)
    blob = np.frombuffer(b"".join(packets.packets), np.uint8)
    out = [(column + END, rows, ends), (column + KEY, rows, np.asarray(packets.keyframe, bool))]
    if len(blob):
        out.append((column + BYTES, slice(byte_start, byte_start + len(blob)), blob))
    return out


def byte_end(array_of: ArrayOf, column: str, rows: int) -> int:
    """Where the committed bytes of the first ``rows`` rows end."""
    return int(array_of(column + END, rows)[rows - 1]) if rows else 0


def read_packets(array_of: ArrayOf, column: str, codec: str, start: int, stop: int) -> PacketColumn:
    """Rows [start, stop) as stored, in row order (episodes interleaved): one contiguous read of their bytes."""
    if stop <= start:
        return PacketColumn(codec, (), np.zeros(0, bool))
    ends = array_of(column + END, stop)[max(0, start - 1) : stop]
    first = int(ends[0]) if start else 0
    ends = ends[1:] if start else ends
    blob = bytes(array_of(column + BYTES, int(ends[-1]))[first : int(ends[-1])]) if ends[-1] > first else b""
    bounds = np.concatenate([[first], ends]) - first
    if np.any(np.diff(bounds) < 0) or bounds[-1] != len(blob):  # a damaged @end: every row reads as a bad packet
        bounds = np.zeros(len(ends) + 1, np.int64)
    packets = tuple(blob[bounds[i] : bounds[i + 1]] for i in range(len(ends)))
    keyframe = np.asarray(array_of(column + KEY, stop)[start:stop], bool)
    return PacketColumn(codec, packets, keyframe)


@dataclass
class DecodedRows:
    """Frames of rows [start, stop) of one camera; rows whose segment did not decode are black."""

    frames: np.ndarray  # (rows, H, W, 3) uint8
    bad_rows: list[int] = field(default_factory=list)  # absolute row numbers
    reasons: list[str] = field(default_factory=list)


def _decode_from(array_of: ArrayOf, column: str, start: int, stop: int) -> dict[int, int]:
    """For each episode in rows [start, stop): the row its decoding starts at (its keyframe at or before its first
    row in the range, searched back in growing windows); episodes with no keyframe before start at their first row."""
    episode = np.asarray(array_of("episode_index", stop)[start:stop])
    key = np.asarray(array_of(column + KEY, stop)[start:stop], bool)
    episodes, firsts = np.unique(episode, return_index=True)
    begin = {int(e): start + int(i) for e, i in zip(episodes, firsts, strict=True)}
    need = {e for e, row in begin.items() if not key[row - start]}
    lo, window = start, FIRST_LOOKBACK_ROWS
    while need and lo > 0:
        new_lo = max(0, lo - window)
        seen = np.asarray(array_of("episode_index", lo)[new_lo:lo])
        keys = np.asarray(array_of(column + KEY, lo)[new_lo:lo], bool)
        for e in list(need):
            hits = np.flatnonzero((seen == e) & keys)
            if hits.size:
                begin[e] = new_lo + int(hits[-1])
                need.discard(e)
        lo, window = new_lo, window * 2
    return begin


def decode_rows(array_of: ArrayOf, column: str, spec: ColumnSpec, start: int, stop: int) -> DecodedRows:
    """Frames of rows [start, stop), each decoded through its episode's rows from the keyframe at or before it.

    Stored packets came from devices: a segment that does not decode (a CodecError: damaged, forged, or missing
    its keyframe) reads as black frames and is named in ``bad_rows``/``reasons``; it never raises, so one bad
    segment cannot stop the learner.
    """
    height, width = spec.shape[0], spec.shape[1]
    out = DecodedRows(np.zeros((max(0, stop - start), height, width, 3), np.uint8))
    if stop <= start:
        return out
    begin = _decode_from(array_of, column, start, stop)
    lo = min(begin.values())
    episode = np.asarray(array_of("episode_index", stop)[lo:stop])
    stored = read_packets(array_of, column, spec.codec, lo, stop)
    for e, first in begin.items():
        rows = lo + np.flatnonzero(episode == e)
        rows = rows[rows >= first]
        cuts = np.flatnonzero(stored.keyframe[rows - lo])
        decoder = CameraDecoder(spec.codec, width, height, camera=column)  # one stream per episode
        for segment in np.split(rows, cuts[cuts > 0]):
            _decode_segment(out, stored, segment, lo, start, decoder)
    return out


def _decode_segment(
    out: DecodedRows, stored: PacketColumn, rows: np.ndarray, lo: int, start: int, decoder: CameraDecoder
) -> None:
    packets = [Packet(stored.packets[r - lo], bool(stored.keyframe[r - lo]), i) for i, r in enumerate(rows)]
    try:
        frames = decoder.decode_frames(packets)
    except CodecError as err:
        bad = [int(r) for r in rows if r >= start]
        if bad:
            out.bad_rows += bad
            out.reasons.append(f"rows {bad[0]}-{bad[-1]}: {err}")
        return
    for frame, row in zip(frames, rows, strict=True):
        if row >= start:
            out.frames[row - start] = decoder.to_array(frame)
