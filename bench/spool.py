"""(a2) The edge's spool alone: CPU per MB to spool (a)'s camera batches, and to upload them from it (the tunnel's
pattern: a window of 32 batches in flight, an ack per batch through ``ack_later``), the segment log the edge uses
(``edge/segment_spool.py``) vs the SQLite spool before it (``edge/spool.py``). No network: what the spool itself
costs an edge, out of the 2 cores' noise that (a)'s end-to-end figures carry."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.common import LOWER, Result
from bench.uplink import make_batches

WINDOW = 32  # TunnelConfig.window_batches


def _cpu_ms_per_mb(make: Callable[[Path], object], folder: Path, batches: list, mb: float) -> tuple[float, float]:
    """(append, upload) CPU ms per MB for one fresh spool in ``folder``."""
    spool = make(folder / "spool.db")
    cpu = time.process_time()
    for batch in batches:
        spool.append(batch)
    append_s = time.process_time() - cpu
    cpu = time.process_time()
    in_flight: list = []
    sent = 0
    while sent < len(batches) or in_flight:  # counts() would wait for the SQLite trimmer's deletes
        room = WINDOW - len(in_flight)
        chosen = spool.next_to_send({b.row_id for b in in_flight}, room, turn=sent) if room >= WINDOW // 4 else []
        in_flight += chosen
        sent += len(chosen)
        acked = in_flight.pop(0)  # the oldest is acked first, as the gateway does
        spool.ack_later(acked.episode_id, acked.first_seq + acked.num_steps)
    spool.close()  # the SQLite spool's trimmer finishes its deletes here
    return append_s * 1e3 / mb, (time.process_time() - cpu) * 1e3 / mb


def measure(workdir: Path, steps: int = 2400, rounds: int = 2, say: Callable[[str], None] = print) -> list[Result]:
    from edge.segment_spool import open_spool
    from edge.spool import Spool

    batches = make_batches("bench-spool", steps, 20)
    mb = sum(len(b.SerializeToString()) for b in batches) / 1e6
    say(f"spool: {len(batches)} camera batches ({mb:.0f} MB) through the SQLite spool and the segment log, {rounds}x")
    runs: dict[str, list[tuple[float, float]]] = {"sqlite": [], "segments": []}
    for i in range(rounds):  # alternately: a busy moment weighs on both
        runs["sqlite"].append(_cpu_ms_per_mb(Spool, workdir / f"spool-sqlite-{i}", batches, mb))
        runs["segments"].append(_cpu_ms_per_mb(open_spool, workdir / f"spool-segments-{i}", batches, mb))
    sqlite, segments = ([min(r[k] for r in runs[name]) for k in (0, 1)] for name in ("sqlite", "segments"))
    note = f"{LOWER}; the least of {rounds} rounds each"
    return [
        Result("spool: CPU ms per MB appended, segment log (vs SQLite)", segments[0], "ms/MB", sqlite[0], note),
        Result(
            "spool: CPU ms per MB uploaded from (read + ack), segment log (vs SQLite)",
            segments[1],
            "ms/MB",
            sqlite[1],
            note,
        ),  # fmt: skip
    ]
