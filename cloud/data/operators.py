"""Who drove which steps: runs of consecutive steps one person drove, kept beside a dataset's episodes.

``<dataset>/operators.jsonl`` holds one line per run (``{"episode_id", "first_seq", "last_seq", "who"}``), appended
with the rows it speaks of and committed with them (``commit.json``'s ``operators_bytes``: a reader reads no
further). Steps no person drove (the policy's) have no line. A store written before this file existed has none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from cloud.data.blobs import Blobs

FILE = "operators.jsonl"


def run_lines(episode_id: str, first_seq: int, operators: Sequence[str], skip: int = 0) -> bytes:
    """The lines for one batch's steps from ``first_seq + skip`` on (``skip``: rows the store already holds)."""
    lines: list[bytes] = []
    start, who = None, ""
    for i in range(skip, len(operators) + 1):
        current = operators[i] if i < len(operators) else ""
        if current != who and who:
            run = {"episode_id": episode_id, "first_seq": first_seq + start, "last_seq": first_seq + i - 1, "who": who}
            lines.append(json.dumps(run).encode() + b"\n")
        if current != who:
            start, who = i, current
    return b"".join(lines)


def append_runs(blobs: Blobs, dataset: str, committed_bytes: int, lines: bytes) -> int:
    """Appends after what was committed (dropping what a killed writer left past it); returns the new length."""
    return blobs.append(f"{dataset}/{FILE}", committed_bytes, lines)


def drivers(blobs: Blobs, dataset: str, committed_bytes: int, episode_id: str) -> dict[int, str]:
    """seq -> who for the steps of ``episode_id`` that a person drove, as committed."""
    lines = blobs.read_appended(f"{dataset}/{FILE}", 0, committed_bytes).splitlines()
    out: dict[int, str] = {}
    for line in lines:
        run = json.loads(line)
        if run["episode_id"] == episode_id:
            out.update(dict.fromkeys(range(run["first_seq"], run["last_seq"] + 1), run["who"]))
    return out
