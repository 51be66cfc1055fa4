"""A person's verdict on an episode, kept beside a dataset's episodes: success, failure, or discarded (re-recorded:
kept, marked, never trained on), and who said so.

``<dataset>/labels.jsonl`` holds one line per label (``{"episode_id", "seq", "outcome", "by"}``: the step it came
with, the episode's last), appended with the rows it comes with and committed with them (``commit.json``'s
``labels_bytes``: a reader reads no further). A later line for an episode wins. A store written before this file
existed has none: its episodes have no label.
"""

from __future__ import annotations

import json
from typing import Any

from cloud.data.blobs import Blobs

FILE = "labels.jsonl"
DISCARDED = "discarded"


def line(episode_id: str, seq: int, outcome: str, by: str) -> bytes:
    return json.dumps({"episode_id": episode_id, "seq": seq, "outcome": outcome, "by": by}).encode() + b"\n"


def append(blobs: Blobs, dataset: str, committed_bytes: int, lines: bytes) -> int:
    """Appends after what was committed; returns the new length."""
    return blobs.append(f"{dataset}/{FILE}", committed_bytes, lines)


def read(blobs: Blobs, dataset: str, start: int, stop: int) -> list[dict[str, Any]]:
    """The labels committed between byte ``start`` and ``stop`` of the dataset's file, in order."""
    return [json.loads(text) for text in blobs.read_appended(f"{dataset}/{FILE}", start, stop).splitlines()]
