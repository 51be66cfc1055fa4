"""Safetensors read in place: the same tensors safetensors reads, and the headers it refuses refused."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from policies.signing import Signer, tensor_digest
from policies.tensor_view import Layout, LayoutError, digests

TENSORS = {
    "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    "b": torch.tensor([True, False, True]),  # 3 bytes: the next tensor starts unaligned
    "h": torch.arange(5, dtype=torch.bfloat16),
    "i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    "empty": torch.zeros(0, 4),
}


def blob(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def test_views_hold_what_safetensors_reads_and_the_digests_match_a_copy() -> None:
    data = bytearray(safetensors.torch.save(TENSORS, metadata={"type": "mlp"}))
    layout = Layout.parse(data)
    views = layout.tensors(data)
    assert layout.metadata == {"type": "mlp"}
    for name, tensor in safetensors.torch.load(bytes(data)).items():
        assert views[name].dtype == tensor.dtype and torch.equal(views[name], tensor), name
    assert digests(views) == {name: tensor_digest(t.clone()) for name, t in TENSORS.items()}
    assert digests(views, dict.fromkeys(views, "bfloat16"))["w"] == tensor_digest(TENSORS["w"].to(torch.bfloat16))
    data[layout.header_bytes + layout.entries["w"][2]] ^= 0xFF  # a view, not a copy: it sees the buffer change
    assert not torch.equal(views["w"], TENSORS["w"])


def test_a_re_signed_header_makes_a_file_safetensors_reads_with_the_same_tensors() -> None:
    original = safetensors.torch.save(TENSORS, metadata={"type": "mlp", "config": "{}"})
    signed = Signer.generate().sign(original, "pick", 3)
    assert safetensors.torch.load(signed).keys() == TENSORS.keys()
    for name, tensor in safetensors.torch.load(signed).items():
        assert torch.equal(tensor, TENSORS[name])
    assert len(signed) % 8 == len(original) % 8  # the header stays padded to 8 bytes, as safetensors writes it


@pytest.mark.parametrize(
    ("header", "data", "says"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "cover"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "cover 8 of 12"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "do not hold"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "starts at 4, not at 8",
        ),
        ({"__metadata__": {"type": 3}}, b"", "strings"),
    ],
)
def test_a_header_that_does_not_describe_its_bytes_is_refused(header: dict, data: bytes, says: str) -> None:
    with pytest.raises(LayoutError, match=says):
        Layout.parse(blob(header, data))


def test_a_name_twice_a_short_blob_and_a_header_past_the_end_are_refused() -> None:
    twice = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    with pytest.raises(LayoutError, match="twice"):
        Layout.parse(len(twice).to_bytes(8, "little") + twice + b"\0")
    with pytest.raises(LayoutError, match="shorter"):
        Layout.parse(b"\1\0")
    with pytest.raises(LayoutError, match="does not fit"):
        Layout.parse((1 << 40).to_bytes(8, "little") + b"{}")
