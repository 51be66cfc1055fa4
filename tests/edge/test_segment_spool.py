"""The segment spool across crashes: a torn last record is cut off, a killed edge restarts with every unacked batch
and none of the acked ones, promotions and acks outlive a restart, segments are recycled, an old SQLite spool moves
in. (Its contract with the uploader is tested on both spools in test_spool*.py.)"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from edge import segment_log, segment_spool
from edge.segment_spool import SegmentSpool, open_spool
from edge.spool import Spool
from protocol import tunnel_pb2 as pb
from protocol.steps import encode_batch

ROOT = Path(__file__).resolve().parents[2]


def batch(episode: str, first_seq: int, n: int = 2, intervention: bool = False, size: int = 0) -> pb.StepBatch:
    columns = {
        "x": np.arange(first_seq, first_seq + n, dtype=np.int64),
        "intervention": np.full(n, intervention),
        "pad": np.random.default_rng(first_seq).integers(0, 255, (n, size), np.uint8),
    }
    return encode_batch(episode, first_seq, columns)


def seqs(spool: SegmentSpool) -> list[tuple[str, int]]:
    return [(s.episode_id, s.first_seq) for s in spool.next_to_send(set(), 1000)]


def test_a_torn_last_record_is_cut_off_and_the_log_goes_on_after_it(tmp_path, caplog) -> None:
    spool = SegmentSpool(tmp_path / "log")
    for seq in (0, 2, 4):
        spool.append(batch("a", seq))
    spool.close()
    [(_, path)] = segment_log.segments(tmp_path / "log")
    whole = path.stat().st_size
    os.truncate(path, whole - 7)  # the last write was cut short by a kill
    caplog.set_level(logging.WARNING, logger="fleetloop")
    reopened = SegmentSpool(tmp_path / "log")
    assert seqs(reopened) == [("a", 0), ("a", 2)]
    assert "cut off" in caplog.text and path.stat().st_size < whole - 7
    reopened.append(batch("a", 4))
    reopened.close()
    assert seqs(SegmentSpool(tmp_path / "log")) == [("a", 0), ("a", 2), ("a", 4)]


def test_a_last_record_whose_checksum_fails_is_dropped(tmp_path) -> None:
    spool = SegmentSpool(tmp_path / "log")
    for seq in (0, 2):
        spool.append(batch("a", seq, size=100))
    spool.close()
    [(_, path)] = segment_log.segments(tmp_path / "log")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a payload byte of the last record that never reached the file
    path.write_bytes(bytes(data))
    assert seqs(SegmentSpool(tmp_path / "log")) == [("a", 0)]


def test_a_killed_edge_restarts_with_every_unacked_batch_and_none_acked(tmp_path) -> None:
    """A real child process appends and acks (some through ack_later), then is killed without closing anything."""
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np
        from protocol.steps import encode_batch
        def batch(episode, seq, intervention, size):
            columns = {{"x": np.arange(seq, seq + 2), "intervention": np.full(2, intervention),
                       "pad": np.zeros((2, size), np.uint8)}}
            return encode_batch(episode, seq, columns)
        from edge.segment_spool import SegmentSpool
        spool = SegmentSpool({str(tmp_path / "log")!r}, segment_bytes=4000)
        for seq in range(0, 40, 2):
            for episode in ("a", "b", "c"):
                spool.append(batch(episode, seq, episode == "c" and seq == 30, 300))
        spool.ack("a", 40)
        spool.ack_later("b", 20)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    spool = SegmentSpool(tmp_path / "log", segment_bytes=4000)
    assert spool.held() == {"b": 20, "c": 0}
    assert spool.counts() == (10 + 20, 2 * (10 + 20))
    order = seqs(spool)
    # c was promoted by its batch at 30: urgent whole, in seq order; b's unacked batches after, one in four slots
    assert [s for e, s in order if e == "c"] == list(range(0, 40, 2))
    assert [s for e, s in order if e == "b"] == list(range(20, 40, 2))
    assert order[:3] == [("c", 0), ("c", 2), ("c", 4)] and order[3][0] == "b"
    spool.close()
    again = SegmentSpool(tmp_path / "log", segment_bytes=4000)  # the acks read at the last open are kept
    assert again.held() == {"b": 20, "c": 0}
    again.ack("c", 40)
    again.ack("b", 40)
    assert again.counts() == (0, 0) and again.size_bytes == 0
    assert len(segment_log.segments(tmp_path / "log")) == 1  # the acked ones left (the one written to stays)


def test_acked_segments_are_written_over_and_their_old_records_never_come_back(tmp_path) -> None:
    spool = SegmentSpool(tmp_path / "log", segment_bytes=3000, spare_segments=2)
    for seq in range(0, 60, 2):
        spool.append(batch("old", seq, size=400))
    spool.ack("old", 60)
    spares = sorted(p.name for p in (tmp_path / "log").glob("*.spare"))
    assert len(spares) == 2  # the rest were deleted
    for seq in range(0, 10, 2):
        spool.append(batch("new", seq, size=100))  # small records over big old ones
    assert len(list((tmp_path / "log").glob("*.spare"))) <= 1  # a spare became the next segment
    spool.close()
    reopened = SegmentSpool(tmp_path / "log", segment_bytes=3000)
    assert seqs(reopened) == [("new", s) for s in range(0, 10, 2)]
    assert [s.batch.columns["x"].shape for s in reopened.pending(limit=100)] == [[2]] * 5


def test_the_ack_log_is_rewritten_small_and_still_holds_what_it_must(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(segment_spool, "ACKS_REWRITE_BYTES", 200)
    spool = SegmentSpool(tmp_path / "log", segment_bytes=2000)
    spool.append(batch("kept", 0))
    for seq in range(0, 80, 2):
        spool.append(batch("gone", seq, size=200))
        spool.ack("gone", seq + 2)
    spool.append(batch("kept", 2))
    spool.ack("kept", 2)  # in a segment still on disk: this ack must outlive the rewrites
    assert (tmp_path / "log" / segment_log.ACKS).stat().st_size < 40 * 30
    spool.close()
    reopened = SegmentSpool(tmp_path / "log", segment_bytes=2000)
    assert reopened.held() == {"kept": 2} and reopened.counts() == (1, 2)


def test_an_edge_on_an_old_sqlite_spool_moves_its_rows_in_with_their_order(tmp_path) -> None:
    old = Spool(tmp_path / "spool.db")
    for seq in (0, 2, 4):
        old.append(batch("auto", seq))
    old.append(batch("touched", 0))
    old.append(batch("touched", 2, intervention=True))
    old.ack("auto", 2)
    before = [(s.episode_id, s.first_seq, s.payload) for s in old.next_to_send(set(), 100)]
    aged = old.backlog().oldest_s
    old.close()
    spool = open_spool(tmp_path / "spool.db")
    assert [(s.episode_id, s.first_seq, s.payload) for s in spool.next_to_send(set(), 100)] == before
    assert not (tmp_path / "spool.db").exists() and not (tmp_path / "spool.db-wal").exists()
    assert spool.backlog().oldest_s >= aged
    spool.close()
    reopened = open_spool(tmp_path / "spool.db")
    assert reopened.held() == {"auto": 2, "touched": 0} and reopened.counts() == (4, 8)


def test_a_read_only_look_beside_the_edge_changes_no_file(tmp_path) -> None:
    edge = SegmentSpool(tmp_path / "log", segment_bytes=1500)
    for seq in range(0, 12, 2):
        edge.append(batch("a", seq, size=300))
    [(_, path)] = segment_log.segments(tmp_path / "log")[-1:]
    with open(path, "ab") as f:
        f.write(segment_log.MAGIC + b"\x00" * 20)  # a record the edge is writing right now, as a reader may see it
    before = {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()}
    look = open_spool(tmp_path / "log.db", read_only=True)
    assert look.counts() == (0, 0) and not (tmp_path / "log.spool").exists()  # nothing there: nothing made
    look = SegmentSpool(tmp_path / "log", read_only=True)
    assert look.counts() == (6, 12) and look.held() == {"a": 0}
    with pytest.raises(PermissionError):
        look.ack("a", 12)
    with pytest.raises(PermissionError):
        look.append(batch("a", 12))
    look.close()
    assert {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()} == before


def first_format_frame(number, episode_id, first_seq, num_steps, priority, spooled_at, message) -> list[bytes]:
    """A record as the first release of the segment spool framed it (``FSP1``, a crc32, the bare batch: this
    release's ``message`` parts are head, batch, tail)."""
    payload = message[1]
    episode = episode_id.encode()
    frame = segment_log.FRAME
    head = frame.pack(b"FSP1", priority, len(episode), number, first_seq, num_steps, len(payload), spooled_at)
    crc = zlib.crc32(payload, zlib.crc32(episode, zlib.crc32(head)))
    return [head + segment_log.CRC.pack(crc), episode, payload]


def test_records_of_the_first_format_still_upload_and_new_ones_follow_them(tmp_path, monkeypatch) -> None:
    with monkeypatch.context() as old_release:
        old_release.setattr(segment_log, "frame", first_format_frame)
        spool = SegmentSpool(tmp_path / "log")
        for seq in (0, 2):
            spool.append(batch("a", seq, size=100))
        spool.close()
    [(_, path)] = segment_log.segments(tmp_path / "log")
    assert path.read_bytes()[:4] == b"FSP1"
    spool = SegmentSpool(tmp_path / "log")
    spool.append(batch("a", 4, size=100))  # this release's frame, after the old ones in the same segment
    spool.close()
    again = SegmentSpool(tmp_path / "log")
    assert seqs(again) == [("a", 0), ("a", 2), ("a", 4)]
    sent = again.next_to_send(set(), 3)
    assert [pb.StepBatch.FromString(b.payload).first_seq for b in sent] == [0, 2, 4]
    again.close()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # this release's record fails its checksum: it is the torn end, the old ones stay
    path.write_bytes(bytes(data))
    assert seqs(SegmentSpool(tmp_path / "log")) == [("a", 0), ("a", 2)]
