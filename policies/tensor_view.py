"""Safetensors bytes read in place: tensors that view the buffer (no copy of a large model), and digests of many
tensors hashed at once (hashlib lets go of the GIL), so signing, checking and loading a version cost one pass over
its bytes each instead of a copy, a hash of the copy and another copy.

The header is checked as safetensors itself checks it (known dtypes, shapes that fit their byte ranges, ranges that
tile the data section with no gap or overlap, no name twice) before any tensor is made.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
METADATA = "__metadata__"
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
type Buffer = bytes | bytearray | memoryview


class HashedBuffer(bytearray):
    """A safetensors file received into memory whose tensors were hashed as its bytes arrived (``digests``: each
    tensor's ``tensor_digest`` by name, None until all were), so loading it need not hash it again. Its bytes do not
    change once hashed."""

    digests: dict[str, str] | None = None


class LayoutError(ValueError):
    """Bytes that are not a well-formed safetensors file."""


def _no_twins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise LayoutError(f"not a safetensors blob: {key!r} appears twice in its header")
        seen[key] = value
    return seen


def read_header(data: Buffer, total_bytes: int | None = None) -> tuple[Any, int]:
    """A safetensors blob's header (8-byte little-endian length, then JSON) parsed, and that JSON's length.
    ``total_bytes``: the whole blob's length when ``data`` is only its start (a file still arriving)."""
    total = len(data) if total_bytes is None else total_bytes
    if len(data) < 8:
        raise LayoutError("not a safetensors blob: shorter than its 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > min(total - 8, MAX_HEADER_BYTES) or 8 + n > len(data):
        raise LayoutError(f"not a safetensors blob: header length {n} does not fit in {total} bytes")
    try:
        return json.loads(bytes(data[8 : 8 + n]), object_pairs_hook=_no_twins), n
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"not a safetensors blob: bad header ({exc})") from None


@dataclass(frozen=True)
class Layout:
    """A safetensors file's header: its metadata, and where each tensor lies in the data section."""

    header_bytes: int  # 8 + the JSON's length: where the data section starts
    metadata: dict[str, str]
    entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]  # name -> dtype, shape, begin, end

    @classmethod
    def parse(cls, data: Buffer, total_bytes: int | None = None) -> Layout:
        """``total_bytes``: the whole file's length when ``data`` holds only its start (at least its header)."""
        total = len(data) if total_bytes is None else total_bytes
        header, n = read_header(data, total)
        if not isinstance(header, dict):
            raise LayoutError("not a safetensors blob: its header is not a JSON object")
        metadata = header.pop(METADATA, {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise LayoutError(f"not a safetensors blob: {METADATA} must map names to strings")
        entries = {name: _entry(name, info) for name, info in header.items()}
        _check_tiling(entries, total - 8 - n)
        return cls(8 + n, metadata, entries)

    def header(self, metadata: Mapping[str, str]) -> bytes:
        """This layout's header (8-byte length, then JSON padded with spaces to 8 bytes, as safetensors writes it)
        with ``metadata`` instead of its own: followed by the same data section, a file with the same tensors."""
        names = {dtype: name for name, dtype in DTYPES.items()}
        header: dict[str, Any] = {METADATA: dict(metadata)} if metadata else {}
        for name, (dtype, shape, begin, end) in self.entries.items():
            header[name] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [begin, end]}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        return len(text).to_bytes(8, "little") + text

    def tensors(self, data: Buffer) -> dict[str, torch.Tensor]:
        """Each tensor as a view of ``data`` (which must outlive them and not change); a tensor whose bytes are not
        aligned to its dtype is copied."""
        out = {}
        with warnings.catch_warnings():  # bytes are read-only: the views are only read (hashed, or loaded by assign)
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            for name, (dtype, shape, begin, end) in self.entries.items():
                start, count = self.header_bytes + begin, math.prod(shape)
                if count == 0:
                    out[name] = torch.empty(shape, dtype=dtype)
                elif start % dtype.itemsize:
                    raw = torch.frombuffer(bytearray(data[start : self.header_bytes + end]), dtype=torch.uint8)
                    out[name] = raw.view(dtype).reshape(shape)
                else:
                    out[name] = torch.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)
        return out


def _entry(name: str, info: Any) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    where = f"not a safetensors blob: tensor {name!r}"
    if not isinstance(info, dict):
        raise LayoutError(f"{where} is not described by an object")
    dtype, shape, offsets = DTYPES.get(info.get("dtype")), info.get("shape"), info.get("data_offsets")
    if dtype is None:
        raise LayoutError(f"{where}: unknown dtype {info.get('dtype')!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise LayoutError(f"{where}: shape must be a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and o >= 0 for o in offsets):
        raise LayoutError(f"{where}: data_offsets must be two non-negative integers")
    begin, end = offsets
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise LayoutError(f"{where}: {end - begin} bytes do not hold shape {shape} of {info['dtype']}")
    return dtype, tuple(shape), begin, end


def _check_tiling(entries: Mapping[str, tuple[torch.dtype, tuple[int, ...], int, int]], data_bytes: int) -> None:
    """The byte ranges cover the data section exactly, one after the other (as safetensors requires)."""
    at = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != at:
            raise LayoutError(f"not a safetensors blob: tensor {name!r} starts at {begin}, not at {at}")
        at = end
    if at != data_bytes:
        raise LayoutError(f"not a safetensors blob: its tensors cover {at} of {data_bytes} data bytes")


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes, hashed in place (no copy of a contiguous tensor)."""
    digest = hashlib.sha256(f"{tensor.dtype}:{tuple(tensor.shape)}:".encode())
    digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


_POOL: ThreadPoolExecutor | None = None


def on_wire(tensor: torch.Tensor, wire_dtype: str) -> torch.Tensor:
    """A tensor as it travels: float32 cast to the wire dtype, everything else as it is."""
    return tensor.to(WIRE_DTYPES[wire_dtype]) if tensor.dtype == torch.float32 else tensor


def _digest(tensor: torch.Tensor, wire_dtype: str | None) -> str:
    return tensor_digest(tensor if wire_dtype is None else on_wire(tensor, wire_dtype))


def digests[K](
    tensors: Mapping[K, torch.Tensor], wire: Mapping[K, str] | None = None, parallel: bool = True
) -> dict[K, str]:
    """``tensor_digest`` of each tensor, cast first to its ``wire`` dtype where one is given (on the hashing thread);
    ``parallel`` hashes several at once on a small shared pool of threads."""
    global _POOL
    wire = wire or {}
    if not parallel or len(tensors) < 2:
        return {key: _digest(tensor, wire.get(key)) for key, tensor in tensors.items()}
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="digest")
    # The largest first, so the pool's threads finish together.
    order = sorted(tensors, key=lambda key: -tensors[key].numel() * tensors[key].element_size())
    futures = {key: _POOL.submit(_digest, tensors[key], wire.get(key)) for key in order}
    return {key: futures[key].result() for key in tensors}
