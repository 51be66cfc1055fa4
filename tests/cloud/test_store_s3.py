"""The episode store on S3-compatible object storage (``s3://bucket/prefix``), against moto's real S3 API server on
loopback: the same commit point, readers in other processes, encoded cameras, people's labels, one writer held by a
lease, and a writer SIGKILLed mid-write whose acked rows all survive."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from cloud.data.blobs import open_blobs
from cloud.data.store import EpisodeStore
from tests.cloud.test_store import (
    CRASHING_WRITER,
    READER,
    SCHEMA,
    check_consistent,
    child,
    read_acks,
    rows,
    write_random_batches,
)


def labelled(episode: int, first_seq: int, n: int, **extra: object) -> object:
    batch = rows(episode, first_seq, n)
    for name, value in extra.items():
        setattr(batch, name, value)
    return batch


def test_rows_episodes_people_and_labels_round_trip_through_object_storage(s3_url: str) -> None:
    with EpisodeStore(s3_url, chunk_rows=8) as store:
        store.ensure_dataset("arm", SCHEMA)
        for first in range(0, 30, 10):  # crosses chunks and capacity doublings
            store.write([rows(1, first, 10), labelled(2, first, 10, operators=("alice",) * 4 + ("",) * 6)])
        store.write([labelled(3, 0, 5, label="success", labelled_by="bob")])
        written = check_consistent(store)
    reader = EpisodeStore(s3_url, read_only=True)
    assert check_consistent(reader) == written == {"ep1": 30, "ep2": 30, "ep3": 5}
    assert reader.drivers("arm", "ep2") == {s: "alice" for first in (0, 10, 20) for s in range(first, first + 4)}
    ep3 = reader.episode("ep3")
    assert ep3 is not None and (ep3.label, ep3.labelled_by) == ("success", "bob")
    assert str(reader.root) == s3_url
    # nothing of it went to a local folder: the objects are in the bucket
    assert "arm" in open_blobs(s3_url).children("")


def test_a_second_writer_is_refused_naming_the_url_and_one_taking_over_stops_the_first(s3_url: str) -> None:
    first = EpisodeStore(s3_url, chunk_rows=8)
    first.ensure_dataset("arm", SCHEMA)
    first.write([rows(1, 0, 4)])
    with pytest.raises(RuntimeError, match=f"another process writes to the episode store at {s3_url} .*pid"):
        EpisodeStore(s3_url)
    second = EpisodeStore(s3_url, chunk_rows=8, take_over=True)  # the operator says the first is gone
    with pytest.raises(RuntimeError, match="taken over by another writer"):
        first.write([rows(1, 4, 4)])  # it was not: it stops at its next commit rather than write beside the new one
    first.close()  # leaves the lease it no longer holds alone
    second.write([rows(1, 4, 2)])
    assert check_consistent(second) == {"ep1": 6}
    second.close()
    EpisodeStore(s3_url).close()  # a clean close gave the lease back


def test_a_reader_in_another_process_sees_only_whole_committed_rows(s3_url: str, tmp_path: Path) -> None:
    finished = tmp_path / "finished"
    reader, started = child(READER, s3_url, finished), time.monotonic()
    while not Path(f"{finished}.ready").exists():  # the reader has opened the empty prefix
        assert reader.poll() is None and time.monotonic() - started < 30
        time.sleep(0.05)
    writer = EpisodeStore(s3_url, chunk_rows=8)
    writer.ensure_dataset("arm", SCHEMA)
    next_seq = write_random_batches(writer, 200, started)
    finished.touch()
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0
    report = json.loads(out)
    assert report["final"] == sum(next_seq.values()) == writer.committed_rows("arm")
    assert report["distinct"] >= 3, report  # it really read while the writer wrote
    writer.close()


def test_a_writer_killed_mid_write_loses_no_acked_row_and_a_new_one_takes_over(s3_url: str) -> None:
    acked: dict[str, int] = {}
    taking_over = CRASHING_WRITER.replace("chunk_rows=8)", "chunk_rows=8, take_over=True)")
    for attempt in range(2):
        proc = child(taking_over, s3_url, attempt)
        read_acks(proc, 3 + 3 * attempt, acked)
        assert proc.poll() is None, "the writer died by itself"
        proc.send_signal(signal.SIGKILL)  # most likely in the middle of the next write
        proc.wait()
        with pytest.raises(RuntimeError, match="--take-over-store"):
            EpisodeStore(s3_url)  # the dead writer's lease is still there
        with EpisodeStore(s3_url, read_only=True) as reader:
            stored = check_consistent(reader)  # nothing torn is visible
            assert all(stored[episode] >= next_seq for episode, next_seq in acked.items()), (stored, acked)
    with EpisodeStore(s3_url, chunk_rows=8, take_over=True) as store:
        assert all(store.next_seq(episode) >= next_seq for episode, next_seq in acked.items())
        store.write([rows(0, store.next_seq("ep0"), 3), rows(9, 0, 2)])
        check_consistent(store)


def test_lines_past_the_commit_are_invisible_and_the_next_commit_replaces_them(s3_url: str) -> None:
    store = EpisodeStore(s3_url, chunk_rows=8)
    store.ensure_dataset("arm", SCHEMA)
    store.write([rows(1, 0, 10), rows(2, 0, 3)])
    committed = store._datasets["arm"].index_bytes
    # What a writer killed between its episodes part and its commit leaves behind:
    blobs = open_blobs(s3_url)
    ghost = b'{"episode_id": "ghost", "resource_id": "x", "source": "sim", "task": "t"}\n' * 3
    blobs.append("arm/episodes.jsonl", committed, ghost)
    reader = EpisodeStore(s3_url, read_only=True)
    assert check_consistent(reader) == {"ep1": 10, "ep2": 3}
    store.write([rows(3, 0, 2)])  # its part starts where the ghost's did: it replaces it
    store.write([rows(4, 0, 1)])
    reader.refresh()
    assert [e.episode_id for e in reader.episodes()] == ["ep1", "ep2", "ep3", "ep4"]
    assert check_consistent(reader) == {"ep1": 10, "ep2": 3, "ep3": 2, "ep4": 1}
    store.close()


def test_encoded_camera_columns_read_back_as_frames_from_object_storage(s3_url: str) -> None:
    from tests.cloud.test_store_video import SCHEMA as VIDEO_SCHEMA
    from tests.cloud.test_store_video import check_frames, encode, scene, write_interleaved

    originals = {0: scene(0, 20), 1: scene(1, 13)}
    with EpisodeStore(s3_url, chunk_rows=8) as store:
        store.ensure_dataset("arm", VIDEO_SCHEMA)
        write_interleaved(store, {e: encode(f) for e, f in originals.items()}, [5, 3, 7, 1])
    reader = EpisodeStore(s3_url, read_only=True)
    frames = check_frames(reader, originals)
    assert frames.shape[0] == 33 and reader.bad_frames == 0
    assert len(reader.read_packets("arm", "obs.front")) == 33
