import numpy as np

from edge.spool import Spool
from protocol.steps import encode_batch


def batch(episode: str, first_seq: int, n: int = 3):
    return encode_batch(episode, first_seq, {"x": np.arange(first_seq, first_seq + n, dtype=np.int64)})


def test_pending_in_order_and_ack_removes_only_covered(tmp_path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.append(batch("a", 0))
    spool.append(batch("b", 0))
    spool.append(batch("a", 3))
    assert [(b.episode_id, b.first_seq) for b in spool.pending()] == [("a", 0), ("b", 0), ("a", 3)]
    assert spool.ack("a", 5) == 1  # the batch 3..5 is not fully covered and stays
    assert spool.held() == {"a": 3, "b": 0}
    assert spool.counts() == (2, 6)


def test_survives_reopen_and_ignores_duplicates(tmp_path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.append(batch("a", 0))
    spool.append(batch("a", 0))
    spool.close()
    reopened = Spool(tmp_path / "spool.db")
    [only] = reopened.pending()
    assert only.batch.columns["x"].shape == [3]
    assert reopened.pending(after_row_id=only.row_id) == []
