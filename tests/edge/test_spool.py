import sqlite3
import time

import numpy as np

from edge.spool import PAGE_BYTES, Spool
from protocol.steps import encode_batch


def batch(episode: str, first_seq: int, n: int = 3):
    return encode_batch(episode, first_seq, {"x": np.arange(first_seq, first_seq + n, dtype=np.int64)})


def test_pending_in_order_and_ack_removes_only_covered(make_spool, tmp_path) -> None:
    spool = make_spool(tmp_path / "spool.db")
    spool.append(batch("a", 0))
    spool.append(batch("b", 0))
    spool.append(batch("a", 3))
    assert [(b.episode_id, b.first_seq) for b in spool.pending()] == [("a", 0), ("b", 0), ("a", 3)]
    assert spool.ack("a", 5) == 1  # the batch 3..5 is not fully covered and stays
    assert spool.held() == {"a": 3, "b": 0}
    assert spool.counts() == (2, 6)


def test_survives_reopen_and_ignores_duplicates(make_spool, tmp_path) -> None:
    spool = make_spool(tmp_path / "spool.db")
    spool.append(batch("a", 0))
    spool.append(batch("a", 0))
    spool.close()
    reopened = make_spool(tmp_path / "spool.db")
    [only] = reopened.pending()
    assert only.batch.columns["x"].shape == [3]
    assert reopened.pending(after_row_id=only.row_id) == []


def test_ack_later_stops_offering_at_once_and_deletes_off_the_caller(make_spool, tmp_path) -> None:
    spool = make_spool(tmp_path / "spool.db")
    for first in range(0, 30, 3):
        spool.append(batch("a", first))
    spool.append(batch("b", 0))
    spool.ack_later("a", 27)  # nine of a's ten batches
    offered = spool.next_to_send(skip=(), limit=10)
    assert [(b.episode_id, b.first_seq) for b in offered] == [("a", 27), ("b", 0)]  # none of the acked ones
    deadline = time.monotonic() + 5
    while spool.counts()[0] > 2 and time.monotonic() < deadline:  # the trimmer deletes them on its thread
        time.sleep(0.01)
    assert spool.counts() == (2, 6)
    assert spool.size_bytes == sum(len(b.batch.SerializeToString()) for b in offered)
    spool.ack_later("a", 30)
    spool.ack_later("a", 12)  # older than what is acked already: changes nothing
    spool.close()  # finishes the deletes it was given
    reopened = make_spool(tmp_path / "spool.db")
    assert reopened.held() == {"b": 0}


def test_page_size_is_large_for_a_new_spool(tmp_path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.append(batch("a", 0))
    spool.close()
    with sqlite3.connect(tmp_path / "spool.db") as db:
        assert db.execute("PRAGMA page_size").fetchone()[0] == PAGE_BYTES


def test_dropping_acked_camera_batches_does_not_write_them_again(tmp_path) -> None:
    """Acked batches leave in one transaction per turn of the trimmer, and their freed pages are not zeroed: the WAL
    grows by a few pages, not by the batches' size (as it did, twice over, with one commit per episode and zeroed
    pages)."""
    path = tmp_path / "spool.db"
    spool = Spool(path)
    frames = np.random.default_rng(0).integers(0, 255, (20, 96, 96, 3), np.uint8)  # ~550 kB per batch
    for episode in range(8):
        spool.append(encode_batch(f"e{episode}", 0, {"obs.pixels": frames}))
    spool._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    payload = spool.size_bytes
    with spool._acked_lock:  # acks that arrived together, as a group commit's do: one turn of the trimmer
        spool._acked_to.update({f"e{episode}": 20 for episode in range(1, 8)})
    spool.ack_later("e0", 20)
    deadline = time.monotonic() + 10
    while spool.size_bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spool.size_bytes == 0
    wal = path.with_name(path.name + "-wal").stat().st_size  # read before close, which checkpoints and removes it
    spool.close()
    assert wal < payload / 4, (wal, payload)
