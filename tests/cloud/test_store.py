"""The episode store: schema checks, idempotent group commits, a concurrent reader, crash repair."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cloud.data.store import ColumnSpec, EpisodeStore, StepRows

REPO = Path(__file__).resolve().parents[2]
SCHEMA = {
    "obs.state": ColumnSpec("<f4", (2,)),  # [seq, episode number]: every row says what it is
    "obs.pixels": ColumnSpec("|u1", (4, 4, 3)),  # seq % 251
    "action": ColumnSpec("<f4", (2,)),
    "reward": ColumnSpec("<f4", ()),
    "done": ColumnSpec("|b1", ()),
    "success": ColumnSpec("|b1", ()),
    "intervention": ColumnSpec("|b1", ()),
    "policy_version": ColumnSpec("<i8", ()),
    "t_mono_ns": ColumnSpec("<i8", ()),
}


def rows(episode: int, first_seq: int, n: int, done_at: int = -1, resource: str = "robot-1") -> StepRows:
    seq = np.arange(first_seq, first_seq + n)
    return StepRows(
        dataset="arm",
        episode_id=f"ep{episode}",
        resource_id=resource,
        source="sim",
        task="pick",
        first_seq=first_seq,
        columns={
            "obs.state": np.stack([seq, np.full(n, episode)], axis=1).astype(np.float32),
            "obs.pixels": np.broadcast_to((seq % 251).astype(np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy(),
            "action": np.zeros((n, 2), np.float32),
            "reward": np.zeros(n, np.float32),
            "done": seq == done_at,
            "success": seq == done_at,
            "intervention": seq % 3 == 0,
            "policy_version": seq // 10,
            "t_mono_ns": seq * 1000,
        },
    )


def check_consistent(store: EpisodeStore) -> dict[str, int]:
    """Every committed row encodes its own (episode, seq); each episode is seq 0..n-1 exactly once."""
    data = store.read("arm")
    episodes = store.episodes("arm")
    assert len(data["seq"]) == store.committed_rows("arm") == sum(e.num_steps for e in episodes)
    np.testing.assert_array_equal(data["obs.state"][:, 0], data["seq"])
    np.testing.assert_array_equal(data["obs.pixels"][:, 0, 0, 0], data["seq"] % 251)
    names = np.array([int(e.episode_id.removeprefix("ep")) for e in episodes] or [0])
    np.testing.assert_array_equal(data["obs.state"][:, 1], names[data["episode_index"]])
    for e in episodes:
        mine = data["seq"][store.row_indices("arm", e.episode_id)]
        np.testing.assert_array_equal(mine, np.arange(e.num_steps), err_msg=e.episode_id)
        assert store.next_seq(e.episode_id) == e.num_steps == e.last_seq + 1
    return {e.episode_id: e.num_steps for e in episodes}


@pytest.fixture
def store(tmp_path: Path) -> EpisodeStore:
    store = EpisodeStore(tmp_path / "store", chunk_rows=8)
    store.ensure_dataset("arm", SCHEMA)
    yield store
    store.close()


def test_schema_is_created_once_and_mismatches_name_the_column(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("arm", SCHEMA)
    same = {**SCHEMA, "obs.state": ColumnSpec("float32", [2]), "seq": ColumnSpec("int64", ())}
    store.ensure_dataset("arm", same)  # aliases, lists and the store's own columns are fine
    assert store.datasets() == ["arm"]
    assert store.schema("arm")["obs.pixels"] == ColumnSpec("|u1", (4, 4, 3))
    assert store.schema("arm")["episode_index"] == ColumnSpec("<i8", ())
    with pytest.raises(ValueError, match="obs.state"):
        store.ensure_dataset("arm", {**SCHEMA, "obs.state": ColumnSpec("<f8", (2,))})
    with pytest.raises(ValueError, match="obs.pixels"):
        store.ensure_dataset("arm", {**SCHEMA, "obs.pixels": ColumnSpec("|u1", (4, 4, 4))})
    with pytest.raises(ValueError, match="obs.extra"):
        store.ensure_dataset("arm", {**SCHEMA, "obs.extra": ColumnSpec("<f4", ())})
    with pytest.raises(ValueError, match="reward"):
        store.ensure_dataset("arm", {k: v for k, v in SCHEMA.items() if k != "reward"})
    with pytest.raises(ValueError, match="done"):
        store.ensure_dataset("other", {**SCHEMA, "done": ColumnSpec("<f4", ())})
    with pytest.raises(ValueError, match="speed"):
        store.ensure_dataset("other", {**SCHEMA, "speed": ColumnSpec("<f4", ())})
    with pytest.raises(ValueError, match="dataset"):
        store.ensure_dataset("../escape", SCHEMA)
    with pytest.raises(ValueError, match="^dataset:"):  # names are matched whole...
        store.ensure_dataset("arm\n", SCHEMA)
    with pytest.raises(ValueError, match="differs only in case"):  # ...and unique regardless of case
        store.ensure_dataset("ARM", SCHEMA)
    with pytest.raises(RuntimeError, match="another process"):
        EpisodeStore(tmp_path / "store")  # one writer at a time
    store.close()
    with pytest.raises(ValueError, match="obs.state"):
        EpisodeStore(tmp_path / "store").ensure_dataset("arm", {**SCHEMA, "obs.state": ColumnSpec("<f4", (3,))})


def test_redelivery_is_a_no_op_and_overlaps_store_only_new_rows(store: EpisodeStore) -> None:
    assert store.next_seq("ep1") == 0
    assert store.write([rows(1, 0, 10)]) == {"ep1": 10}
    assert store.write([rows(1, 0, 10)]) == {"ep1": 10}
    assert store.write([rows(1, 0, 4), rows(1, 0, 10)]) == {"ep1": 10}
    assert store.committed_rows("arm") == 10
    assert store.write([rows(1, 5, 10)]) == {"ep1": 15}  # 5..9 known, 10..14 new
    assert store.write([rows(1, 15, 3), rows(1, 15, 3), rows(1, 18, 2)]) == {"ep1": 20}
    assert check_consistent(store) == {"ep1": 20}
    assert store.read("arm", ["seq"], start=18, stop=99)["seq"].tolist() == [18, 19]


def test_gaps_are_refused_and_nothing_of_that_write_is_stored(store: EpisodeStore) -> None:
    with pytest.raises(ValueError, match="first_seq"):
        store.write([rows(1, 3, 5)])
    store.write([rows(1, 0, 5)])
    with pytest.raises(ValueError, match="first_seq"):
        store.write([rows(2, 0, 5), rows(1, 6, 5)])
    with pytest.raises(ValueError, match="first_seq"):
        store.write([rows(1, 5, 2), rows(1, 8, 2)])
    assert store.committed_rows("arm") == 5 and store.next_seq("ep2") == 0
    assert [e.episode_id for e in store.episodes()] == ["ep1"]
    bad = rows(1, 5, 2)
    bad.columns["obs.state"] = bad.columns["obs.state"][:, :1]
    with pytest.raises(ValueError, match="obs.state"):
        store.write([bad])
    with pytest.raises(ValueError, match="resource_id"):  # a device writes only its own episodes
        store.write([rows(1, 5, 2, resource="robot-2")])
    assert check_consistent(store) == {"ep1": 5}


def test_interleaved_episodes_keep_their_rows_and_statistics(store: EpisodeStore) -> None:
    store.write([rows(1, 0, 5), rows(2, 0, 3, resource="robot-2")])
    store.write([rows(2, 3, 4, resource="robot-2"), rows(1, 5, 6, done_at=10), rows(3, 0, 2)])
    store.write([rows(2, 7, 5, done_at=11, resource="robot-2")])
    assert check_consistent(store) == {"ep1": 11, "ep2": 12, "ep3": 2}
    one, two, three = store.episodes("arm")
    assert (one.index, two.index, three.index) == (0, 1, 2)
    assert (two.resource_id, two.source, two.task) == ("robot-2", "sim", "pick")
    assert one.done and one.success and not three.done and not three.success
    assert (one.intervention_steps, two.intervention_steps, three.intervention_steps) == (4, 4, 1)
    assert one.first_policy_version == 0 and two.last_seq == 11
    np.testing.assert_array_equal(store.row_indices("arm", "ep2"), [5, 6, 7, 8, 9, 10, 11, 20, 21, 22, 23, 24])


def test_reopen_restores_rows_episodes_and_next_seq(tmp_path: Path, store: EpisodeStore) -> None:
    for first in range(0, 40, 7):  # crosses several chunks and capacity doublings
        store.write([rows(1, first, 7), rows(2, first, 7, done_at=41)])
    before = check_consistent(store)
    store.close()
    reader = EpisodeStore(tmp_path / "store", read_only=True)
    assert check_consistent(reader) == before
    with pytest.raises(PermissionError):
        reader.write([rows(1, 42, 1)])
    writer = EpisodeStore(tmp_path / "store", chunk_rows=8)
    assert writer.next_seq("ep1") == 42 and writer.episodes()[1].done
    writer.write([rows(1, 40, 5), rows(4, 0, 3)])
    assert check_consistent(writer) == {"ep1": 45, "ep2": 42, "ep4": 3}
    reader.refresh()
    assert check_consistent(reader) == {"ep1": 45, "ep2": 42, "ep4": 3}
    writer.close()


READER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("store_tests", sys.argv[-1])  # this test file, for its helpers
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
import json, time
from pathlib import Path
from cloud.data.store import EpisodeStore
store = EpisodeStore(sys.argv[1], read_only=True)  # opened before the writer creates anything
Path(sys.argv[2] + ".ready").touch()
seen = []
while True:
    finished = Path(sys.argv[2]).exists()
    store.refresh()
    if "arm" in store.datasets():
        tests.check_consistent(store)
        assert not seen or seen[-1] <= store.committed_rows("arm"), "the committed count went back"
        seen.append(store.committed_rows("arm"))
    if finished:
        break
    time.sleep(0.005)
print(json.dumps({"polls": len(seen), "distinct": len(set(seen)), "final": seen[-1] if seen else 0}))
"""


def child(code: str, *args: object, helpers: str = __file__) -> subprocess.Popen:
    """``code`` in a child process, given ``args`` and last the test file whose helpers it loads."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", code, *map(str, args), helpers]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def read_acks(proc: subprocess.Popen, lines: int, acked: dict[str, int]) -> None:
    """Folds ``lines`` of a crashing writer's "episode=next_seq ..." acks into ``acked`` (the highest of each)."""
    for _ in range(lines):
        for ack in proc.stdout.readline().split():
            episode, next_seq = ack.split("=")
            acked[episode] = max(acked.get(episode, 0), int(next_seq))


def write_random_batches(writer: EpisodeStore, at_least_rows: int, started: float) -> dict[int, int]:
    """Writes batches of 3 of 6 episodes for at least 2 s after ``started`` and ``at_least_rows`` rows; each
    episode's next seq."""
    rng = np.random.default_rng(0)
    next_seq = dict.fromkeys(range(6), 0)
    while time.monotonic() - started < 2 or sum(next_seq.values()) < at_least_rows:
        batch = []
        for episode in rng.choice(6, size=3, replace=False).tolist():
            n = int(rng.integers(1, 12))
            batch.append(rows(episode, next_seq[episode], n))
            next_seq[episode] += n
        writer.write(batch)
    return next_seq


def test_reader_in_another_process_sees_only_whole_committed_rows(tmp_path: Path) -> None:
    root, finished = tmp_path / "store", tmp_path / "finished"
    reader, started = child(READER, root, finished), time.monotonic()
    while not Path(f"{finished}.ready").exists():  # the reader has opened the empty root
        assert reader.poll() is None and time.monotonic() - started < 30
        time.sleep(0.05)
    writer = EpisodeStore(root, chunk_rows=8, durable=False)
    writer.ensure_dataset("arm", SCHEMA)
    next_seq = write_random_batches(writer, 400, time.monotonic())
    finished.touch()
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0
    report = json.loads(out)
    assert report["final"] == sum(next_seq.values()) == writer.committed_rows("arm")
    assert report["distinct"] >= 5, report  # it really read while the writer wrote
    writer.close()


CRASHING_WRITER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("store_tests", sys.argv[-1])  # this test file, for its helpers
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
import numpy as np
from cloud.data.store import EpisodeStore
store = EpisodeStore(sys.argv[1], chunk_rows=8)
store.ensure_dataset("arm", tests.SCHEMA)
rng = np.random.default_rng(int(sys.argv[2]))
while True:
    batch = []
    for episode in rng.choice(4, size=2, replace=False).tolist():
        first = max(0, store.next_seq(f"ep{episode}") - int(rng.integers(0, 3)))  # redeliveries too
        batch.append(tests.rows(episode, first, int(rng.integers(1, 40))))
    acks = store.write(batch)
    print(" ".join(f"{k}={v}" for k, v in acks.items()), flush=True)
"""


def test_writer_killed_mid_write_loses_no_acked_row_and_carries_on(tmp_path: Path) -> None:
    root = tmp_path / "store"
    acked: dict[str, int] = {}
    for attempt in range(2):
        proc = child(CRASHING_WRITER, root, attempt)
        read_acks(proc, 3 + 5 * attempt, acked)
        assert proc.poll() is None, "the writer died by itself"
        proc.send_signal(signal.SIGKILL)  # most likely in the middle of the next write
        proc.wait()
        with EpisodeStore(root, chunk_rows=8) as store:
            stored = check_consistent(store)
            assert all(stored[episode] >= next_seq for episode, next_seq in acked.items()), (stored, acked)
    with EpisodeStore(root, chunk_rows=8) as store:
        store.write([rows(0, store.next_seq("ep0"), 3), rows(9, 0, 2)])
        check_consistent(store)


def test_rows_past_the_commit_are_invisible_and_overwritten(tmp_path: Path, store: EpisodeStore) -> None:
    store.write([rows(1, 0, 10), rows(2, 0, 3)])
    # What a writer killed between its array writes and its commit leaves behind:
    arrays = {name: store._array(store._datasets["arm"], name, 0) for name in store.schema("arm")}
    for array in arrays.values():
        array.resize((64, *array.shape[1:]))
        array[13:40] = 7
    with open(tmp_path / "store" / "arm" / "episodes.jsonl", "ab") as f:
        f.write(b'{"episode_id": "ghost", "resource_id": "x", "source": "sim", "ta')
    (tmp_path / "store" / "arm" / "obs.state" / "c.1.0.abc.partial").write_bytes(b"junk")
    store.close()

    reader = EpisodeStore(tmp_path / "store", read_only=True)
    assert check_consistent(reader) == {"ep1": 10, "ep2": 3}
    writer = EpisodeStore(tmp_path / "store", chunk_rows=8)
    assert not list((tmp_path / "store").glob("**/*.partial"))
    assert check_consistent(writer) == {"ep1": 10, "ep2": 3}
    writer.write([rows(2, 3, 4), rows(3, 0, 2)])  # overwrites rows 13..18, 19..39 stay unseen
    assert check_consistent(writer) == {"ep1": 10, "ep2": 7, "ep3": 2}
    reader.refresh()
    assert check_consistent(reader) == {"ep1": 10, "ep2": 7, "ep3": 2}
    assert [e.episode_id for e in reader.episodes()] == ["ep1", "ep2", "ep3"]
    writer.close()


def test_a_reader_before_the_store_exists_finds_it_later(tmp_path: Path) -> None:
    reader = EpisodeStore(tmp_path / "store", read_only=True)
    assert reader.datasets() == [] and not (tmp_path / "store").exists()
    with EpisodeStore(tmp_path / "store") as writer:
        writer.ensure_dataset("arm", SCHEMA)
        writer.write([rows(1, 0, 4)])
    reader.refresh()
    assert reader.datasets() == ["arm"] and check_consistent(reader) == {"ep1": 4}
