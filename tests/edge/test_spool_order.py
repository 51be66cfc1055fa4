"""The spool's upload order on a thin link: episodes a person touched first, each episode in seq order, the
autonomous backlog still drains, and what waits is reported as a backlog."""

from __future__ import annotations

import logging
import sqlite3

import numpy as np

from edge.backlog import BacklogWatch
from edge.spool import AUTONOMOUS_SHARE, Backlog, Spool
from protocol import tunnel_pb2 as pb
from protocol.steps import encode_batch


def batch(episode: str, first_seq: int, n: int = 2, intervention: bool = False, **fields) -> pb.StepBatch:
    columns = {"x": np.arange(first_seq, first_seq + n, dtype=np.int64), "intervention": np.full(n, intervention)}
    return encode_batch(episode, first_seq, columns, **fields)


def order(spool: Spool, limit: int = 100, skip: set[int] | None = None, turn: int = 0) -> list[tuple[str, int]]:
    return [(s.episode_id, s.first_seq) for s in spool.next_to_send(skip or set(), limit, turn)]


def test_an_episode_a_person_touched_goes_first_whole_and_in_seq_order(make_spool, tmp_path) -> None:
    spool = make_spool(tmp_path / "spool.db")
    for seq in (0, 2):
        spool.append(batch("old", seq))
    spool.append(batch("touched", 0))  # autonomous so far: spooled behind "old"
    spool.append(batch("touched", 2, intervention=True))  # a person took over: the whole episode is promoted
    spool.append(batch("touched", 4))  # and stays urgent after the person let go
    spool.append(batch("labelled", 0, label=pb.EpisodeLabel(outcome="failure", by="browser:alice")))
    driven = batch("steered", 0)
    driven.operators.extend(["browser:bob", ""])
    spool.append(driven)
    assert order(spool, limit=AUTONOMOUS_SHARE - 1) == [("touched", 0), ("touched", 2), ("touched", 4)]
    assert order(spool)[:5] == [("touched", 0), ("touched", 2), ("touched", 4), ("old", 0), ("labelled", 0)]
    urgent = [e for e, _ in order(spool, limit=100, turn=1)]  # slot 3 from turn 1 is the autonomous one
    assert urgent[:4] == ["touched", "touched", "old", "touched"]


def test_autonomous_backlog_still_drains_while_people_keep_intervening(make_spool, tmp_path) -> None:
    spool = make_spool(tmp_path / "spool.db")
    for seq in range(0, 20, 2):
        spool.append(batch("auto", seq))
    for episode in range(10):
        spool.append(batch(f"help-{episode}", 0, intervention=True))
    sent, in_flight = [], set()
    for turn in range(2 * AUTONOMOUS_SHARE):  # one batch at a time, as a window of one frees
        [chosen] = spool.next_to_send(in_flight, 1, turn)
        in_flight.add(chosen.row_id)
        sent.append(chosen.episode_id)
    assert sent.count("auto") == 2 and sent[AUTONOMOUS_SHARE - 1] == "auto"
    autos = [s for s in spool.next_to_send(set(), 100) if s.episode_id == "auto"]
    assert [s.first_seq for s in autos] == list(range(0, 20, 2))  # never out of seq order


def test_in_flight_and_refused_batches_are_skipped_and_acked_ones_gone(make_spool, tmp_path) -> None:
    spool = make_spool(tmp_path / "spool.db")
    spool.append(batch("a", 0))
    spool.append(batch("a", 2))
    spool.append(batch("b", 0, intervention=True))
    [b0, a0, a2] = spool.next_to_send(set(), 10)
    assert order(spool, skip={b0.row_id, a0.row_id}) == [("a", 2)]
    spool.ack("b", 2)
    assert order(spool) == [("a", 0), ("a", 2)]
    assert spool.next_to_send(set(), 0) == []


def test_a_spool_written_before_upload_order_existed_opens_and_counts_as_autonomous(tmp_path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE batches (row_id INTEGER PRIMARY KEY AUTOINCREMENT, episode_id TEXT NOT NULL,"
        " first_seq INTEGER NOT NULL, num_steps INTEGER NOT NULL, payload BLOB NOT NULL, UNIQUE(episode_id, first_seq))"
    )
    old = batch("old", 0)
    db.execute(
        "INSERT INTO batches (episode_id, first_seq, num_steps, payload) VALUES ('old', 0, 2, ?)",
        (old.SerializeToString(),),
    )
    db.commit()
    db.close()
    spool = Spool(path)
    spool.append(batch("new", 0, intervention=True))
    assert order(spool) == [("new", 0), ("old", 0)]
    backlog = spool.backlog()
    assert backlog.steps == 4 and backlog.bytes == spool.size_bytes and 0 <= backlog.oldest_s < 60


def test_backlog_counts_what_waits_and_how_long(make_spool, tmp_path, monkeypatch) -> None:
    spool = make_spool(tmp_path / "spool.db")
    assert spool.backlog() == Backlog(0, 0, 0.0)
    clock = [1000.0]
    monkeypatch.setattr("edge.spool.time.time", lambda: clock[0])
    spool.append(batch("a", 0, n=5))
    clock[0] = 1042.0
    spool.append(batch("a", 5, n=3))
    assert spool.backlog() == Backlog(8, spool.size_bytes, 42.0)
    spool.ack("a", 5)
    assert spool.backlog() == Backlog(3, spool.size_bytes, 0.0)


def test_the_edge_says_when_the_link_falls_behind_not_too_often_and_when_it_drains(caplog) -> None:
    now = [0.0]
    watch = BacklogWatch(warn_after_s=10, remind_s=30, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="fleetloop.tunnel"):
        assert watch.update(Backlog(40, 1_000_000, 5.0)) == ""  # a short wait is not a slow link
        said = watch.update(Backlog(1240, 38_000_000, 42.0))
        assert said == (
            "link slower than the robot: 1,240 steps (38 MB) wait to upload, oldest 42 s; "
            "interventions and labelled episodes go first, nothing is dropped"
        )
        now[0] = 20.0
        assert watch.update(Backlog(1500, 45_000_000, 50.0)) == ""  # within the reminder interval: quiet
        now[0] = 31.0
        assert "1,600 steps" in watch.update(Backlog(1600, 48_000_000, 60.0))
        now[0] = 40.0
        assert watch.update(Backlog(0, 0, 0.0)).startswith("upload backlog drained after 40 s")
        assert watch.update(Backlog(0, 0, 0.0)) == ""
    assert len(caplog.records) == 3
