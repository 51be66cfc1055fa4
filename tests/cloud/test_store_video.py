"""Encoded camera columns in the episode store: packets from CameraEncoder written as PacketColumns, read back as
frames (from any row, across interleaved episodes), committed like raw rows, and damaged segments read as black."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import numpy as np
import pytest

from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
from protocol.video import CameraEncoder, PacketColumn, psnr
from tests.cloud.test_store import child, read_acks
from tests.factories import step_columns
from tests.protocol.test_video import moving_scene

REPO = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH, FPS, GOP = 48, 64, 30, 8
SCHEMA = {
    "obs.state": ColumnSpec("<f4", (3,)),
    "obs.front": ColumnSpec("|u1", (HEIGHT, WIDTH, 3), "h264"),
    "obs.wrist": ColumnSpec("|u1", (16, 16, 3)),  # raw, beside the encoded one
    "action": ColumnSpec("<f4", (2,)),
    "reward": ColumnSpec("<f4", ()),
    "done": ColumnSpec("|b1", ()),
    "success": ColumnSpec("|b1", ()),
    "intervention": ColumnSpec("|b1", ()),
    "policy_version": ColumnSpec("<i8", ()),
    "t_mono_ns": ColumnSpec("<i8", ()),
}


def scene(episode: int, frames: int) -> np.ndarray:
    """Each episode's own moving scene (shifted in time, so episodes differ)."""
    return moving_scene(frames + 7 * episode, HEIGHT, WIDTH)[7 * episode :]


def encode(frames: np.ndarray, codec: str = "h264") -> PacketColumn:
    encoder = CameraEncoder(codec, WIDTH, HEIGHT, FPS, gop=GOP, camera="obs.front")
    packets = [packet for frame in frames for packet in encoder.encode(frame)]
    return PacketColumn(codec, tuple(p.data for p in packets), np.array([p.keyframe for p in packets]))


def batch(episode: int, packets: PacketColumn, first: int, stop: int) -> StepRows:
    """Steps [first, stop) of an episode; obs.state[:, 0] is the seq, obs.wrist the seq too."""
    n = stop - first
    columns = step_columns(n)
    columns["obs.state"][:, 0] = np.arange(first, stop)
    columns["obs.front"] = packets[first:stop]
    columns["obs.wrist"] = np.broadcast_to(
        (np.arange(first, stop) % 256).astype(np.uint8)[:, None, None, None], (n, 16, 16, 3)
    )
    return StepRows("arm", f"ep{episode}", "robot-1", "sim", "pick", first, columns)


def write_interleaved(store: EpisodeStore, streams: dict[int, PacketColumn], sizes: list[int]) -> None:
    """Writes every episode in batches of the given sizes, episodes taking turns, two batches per write."""
    done = dict.fromkeys(streams, 0)
    turn = 0
    while any(done[e] < len(streams[e]) for e in streams):
        batches = []
        for e in streams:
            if done[e] < len(streams[e]):
                stop = min(len(streams[e]), done[e] + sizes[turn % len(sizes)])
                batches.append(batch(e, streams[e], done[e], stop))
                done[e], turn = stop, turn + 1
        store.write(batches)


def check_frames(store: EpisodeStore, originals: dict[int, np.ndarray], db: float = 35.0) -> np.ndarray:
    """Every committed row's decoded frame is its episode's original frame at that seq; returns all frames."""
    data = store.read("arm", ["obs.front", "seq", "episode_index"])
    for record in store.episodes("arm"):
        rows = store.row_indices("arm", record.episode_id)
        seqs = data["seq"][rows]
        original = originals[int(record.episode_id.removeprefix("ep"))][seqs]
        worst = min(psnr(a, b) for a, b in zip(original, data["obs.front"][rows], strict=True))
        assert worst >= db, f"{record.episode_id}: {worst:.1f} dB"
    return data["obs.front"]


@pytest.fixture
def originals() -> dict[int, np.ndarray]:
    return {0: scene(0, 30), 1: scene(1, 21), 2: scene(2, 12)}


@pytest.fixture
def store(tmp_path: Path, originals: dict[int, np.ndarray]) -> EpisodeStore:
    store = EpisodeStore(tmp_path / "store", chunk_rows=8)
    store.ensure_dataset("arm", SCHEMA)
    write_interleaved(store, {e: encode(f) for e, f in originals.items()}, [5, 3, 7, 1])
    yield store
    store.close()


def test_frames_read_back_decoded_at_35_db_from_interleaved_episodes(store, originals) -> None:
    assert store.committed_rows("arm") == 63
    frames = check_frames(store, originals)
    assert frames.dtype == np.uint8 and frames.shape == (63, HEIGHT, WIDTH, 3)
    assert store.bad_frames == 0
    raw = store.read("arm", ["obs.wrist", "seq"])  # the raw camera beside it is untouched
    np.testing.assert_array_equal(raw["obs.wrist"][:, 0, 0, 0], raw["seq"].astype(np.uint8))


def test_any_window_reads_the_same_frames_as_the_whole(store) -> None:
    """Windows starting mid-segment, spanning episodes, of one row, and at the very end."""
    whole = store.read("arm", ["obs.front"])["obs.front"]
    key = store.read_packets("arm", "obs.front").keyframe
    mid = next(r for r in range(20, 63) if not key[r] and not key[r - 1])  # a row deep inside some segment
    for start, stop in [(mid, mid + 1), (mid, mid + 9), (3, 40), (0, 63), (62, 63), (50, 200), (10, 10)]:
        part = store.read("arm", ["obs.front"], start, stop)["obs.front"]
        np.testing.assert_array_equal(part, whole[start:stop], err_msg=f"rows {start}..{stop}")


def test_the_learner_loads_decoded_frames_and_follows_each_episode(store, originals) -> None:
    from cloud.learning.sampler import load_steps

    table = load_steps(store, "arm", ["obs.front", "obs.state"], rows=40)
    np.testing.assert_array_equal(table.columns["obs.front"], store.read("arm", ["obs.front"], 0, 40)["obs.front"])
    follows = table.next_row >= 0
    seq = table.columns["obs.state"][:, 0]
    np.testing.assert_array_equal(seq[table.next_row[follows]], seq[follows] + 1)


def test_read_packets_gives_back_the_bytes_written_in_row_order(store, originals, tmp_path) -> None:
    streams = {e: encode(f) for e, f in originals.items()}
    reader = EpisodeStore(tmp_path / "store", read_only=True)
    for opened in (store, reader):
        data = opened.read("arm", ["seq", "episode_index"])
        stored = opened.read_packets("arm", "obs.front", 4, 50)
        names = [int(r.episode_id.removeprefix("ep")) for r in opened.episodes("arm")]
        for i, row in enumerate(range(4, 50)):
            wrote = streams[names[data["episode_index"][row]]]
            assert stored.packets[i] == wrote.packets[data["seq"][row]]
            assert stored.keyframe[i] == wrote.keyframe[data["seq"][row]]
    with pytest.raises(KeyError, match="obs.wrist"):
        store.read_packets("arm", "obs.wrist")


def test_a_reader_sees_only_committed_rows_and_bytes_past_them_are_overwritten(store, originals, tmp_path) -> None:
    """What a writer killed between its array writes and its commit leaves: packets, ends and keys past the commit."""
    reader = EpisodeStore(tmp_path / "store", read_only=True)
    ds = store._datasets["arm"]
    ends = store._array(ds, "obs.front@end", 0)
    bytes_ = store._array(ds, "obs.front@bytes", 0)
    committed = int(ends[62])
    bytes_.resize((committed + 70_000,))
    bytes_[committed:] = 0xEE  # garbage where the next packets go
    ends.resize((128,))
    ends[63:] = committed + 5
    store.close()
    assert reader.committed_rows("arm") == 63
    check_frames(reader, originals)

    writer = EpisodeStore(tmp_path / "store", chunk_rows=8)
    more = {3: scene(3, 10)}
    write_interleaved(writer, {3: encode(more[3])}, [4])
    assert writer.committed_rows("arm") == 73
    reader.refresh()
    for opened in (writer, reader):
        check_frames(opened, {**originals, **more})
        assert opened.bad_frames == 0
    writer.close()


def test_a_raw_array_or_another_codec_for_an_encoded_column_is_refused_naming_it(store, originals) -> None:
    frames = scene(5, 4)
    raw = batch(5, encode(frames), 0, 4)
    raw.columns["obs.front"] = frames
    with pytest.raises(ValueError, match=r"^obs\.front: .*h264.*PacketColumn.*gateway"):
        store.write([raw])
    jpeg = batch(5, encode(frames, "jpeg"), 0, 4)
    with pytest.raises(ValueError, match=r"^obs\.front: dataset stores h264 video, got jpeg"):
        store.write([jpeg])
    short = batch(5, encode(frames), 0, 4)
    short.columns["obs.front"] = short.columns["obs.front"][:3]
    with pytest.raises(ValueError, match=r"^obs\.front: 3 packets for 4 steps"):
        store.write([short])
    packets = batch(5, encode(frames), 0, 4)
    packets.columns["obs.wrist"] = packets.columns["obs.front"]
    with pytest.raises(ValueError, match=r"^obs\.wrist: dataset stores raw frames"):
        store.write([packets])
    assert store.committed_rows("arm") == 63 and store.episode("ep5") is None
    check_frames(store, originals)


def test_a_damaged_segment_reads_as_black_frames_counted_and_logged(store, originals, caplog) -> None:
    """Garbage in place of a stored keyframe (the bytes came from a device): that segment is black, the rest is not."""
    ds = store._datasets["arm"]
    key = store.read_packets("arm", "obs.front").keyframe
    data = store.read("arm", ["seq", "episode_index"])
    victim = next(r for r in range(20, 63) if key[r] and data["seq"][r] > 0)
    ends = store._array(ds, "obs.front@end", 0)
    lo, hi = int(ends[victim - 1]), int(ends[victim])
    store._array(ds, "obs.front@bytes", 0)[lo:hi] = np.random.default_rng(1).integers(0, 256, hi - lo, np.uint8)
    segment = [
        r
        for r in range(victim, 63)
        if data["episode_index"][r] == data["episode_index"][victim]
        and data["seq"][victim] <= data["seq"][r] < data["seq"][victim] + GOP
    ]
    with caplog.at_level(logging.WARNING, logger="fleetloop"):
        frames = store.read("arm", ["obs.front"])["obs.front"]
    assert store.bad_frames == len(segment) > 1
    assert not frames[segment].any()
    others = np.setdiff1d(np.arange(63), segment)
    assert all(frames[r].mean() > 30 for r in others)  # everything else still decodes
    assert f"dataset arm, camera obs.front: {len(segment)} frames did not decode" in caplog.text
    assert f"rows {segment[0]}-{segment[-1]}" in caplog.text
    part = store.read("arm", ["obs.front"], segment[1], segment[1] + 1)["obs.front"]  # mid-segment too
    assert not part.any() and store.bad_frames == len(segment) + 1


def test_an_episode_without_a_keyframe_reads_black_until_one_comes(tmp_path) -> None:
    """A device that sends delta frames first: nothing to decode from, so black until its next keyframe."""
    store = EpisodeStore(tmp_path / "store", chunk_rows=8)
    store.ensure_dataset("arm", SCHEMA)
    frames = scene(0, 20)
    packets = encode(frames)
    store.write([batch(0, packets[3:], 0, 17)])  # starts at a delta frame; a keyframe at seq 5 (frame 8)
    out = store.read("arm", ["obs.front"])["obs.front"]
    assert not out[:5].any() and store.bad_frames == 5
    assert min(psnr(a, b) for a, b in zip(frames[8:20], out[5:], strict=True)) >= 35
    store.close()


def test_appends_rewrite_only_the_last_chunk_of_packet_bytes(tmp_path) -> None:
    """Noise frames make big packets: past one chunk of them, a small append leaves the earlier chunk files alone."""
    store = EpisodeStore(tmp_path / "store", chunk_rows=8)
    store.ensure_dataset("arm", SCHEMA)
    noise = np.random.default_rng(0).integers(0, 256, (300, HEIGHT, WIDTH, 3), np.uint8)
    packets = encode(noise)  # about 2 kB a frame
    store.write([batch(0, packets, 0, 290)])
    folder = tmp_path / "store" / "arm" / "obs.front@bytes"
    before = {p.name: p.stat().st_ino for p in folder.glob("c.*")}
    assert len(before) >= 2, before
    store.write([batch(0, packets, 290, 292)])
    after = {p.name: p.stat().st_ino for p in folder.glob("c.*")}
    last = max(before, key=lambda name: int(name[2:]))
    assert {n: i for n, i in after.items() if n in before and n != last} == {
        n: i for n, i in before.items() if n != last
    }
    assert store.read_packets("arm", "obs.front", 0, 292).packets == packets.packets[:292]
    store.close()


def test_schema_keeps_the_codec_and_an_old_store_without_codecs_reads_raw(tmp_path, store) -> None:
    saved = json.loads((tmp_path / "store" / "arm" / "zarr.json").read_bytes())["attributes"]["schema"]
    assert saved["obs.front"] == ["|u1", [HEIGHT, WIDTH, 3], "h264"]
    assert saved["obs.wrist"] == ["|u1", [16, 16, 3]]  # the form every store had before codecs: read as raw
    # a cloud restarted with another --store-codec: the dataset keeps what it was created with
    store.ensure_dataset("arm", {**SCHEMA, "obs.front": ColumnSpec("|u1", (HEIGHT, WIDTH, 3))})
    assert store.schema("arm")["obs.front"].codec == "h264"
    with pytest.raises(ValueError, match=r"^obs\.front: dataset arm stores"):
        store.ensure_dataset("arm", {**SCHEMA, "obs.front": ColumnSpec("|u1", (HEIGHT, 32, 3), "h264")})
    old = EpisodeStore(tmp_path / "old", chunk_rows=8)
    old.ensure_dataset("arm", {**SCHEMA, "obs.front": ColumnSpec("|u1", (HEIGHT, WIDTH, 3))})
    frames = scene(0, 4)
    rows = batch(0, encode(frames), 0, 4)
    rows.columns["obs.front"] = frames
    old.write([rows])
    old.close()
    reopened = EpisodeStore(tmp_path / "old", read_only=True)
    assert reopened.schema("arm")["obs.front"] == ColumnSpec("|u1", (HEIGHT, WIDTH, 3), "")
    np.testing.assert_array_equal(reopened.read("arm", ["obs.front"])["obs.front"], frames)


@pytest.mark.parametrize(
    ("column", "spec", "error"),
    [
        ("obs.state", ColumnSpec("<f4", (3,), "h264"), "only an RGB camera"),
        ("action", ColumnSpec("|u1", (8, 8, 3), "h264"), "only an RGB camera"),
        ("obs.front", ColumnSpec("|u1", (HEIGHT, WIDTH, 3), "mpeg2"), "codec must be"),
        ("obs.front", ColumnSpec("|u1", (4, 4, 3), "av1"), "too small for AV1"),
    ],
)
def test_a_bad_codec_in_a_schema_is_refused_naming_the_column(tmp_path, column, spec, error) -> None:
    store = EpisodeStore(tmp_path / "store")
    with pytest.raises(ValueError, match=rf"^{column.replace('.', '[.]')}.*{error}"):
        store.ensure_dataset("arm", {**SCHEMA, column: spec})
    assert store.datasets() == []


CRASHING_WRITER = """
import importlib.util, sys, types
tests = sys.modules["tests"] = types.ModuleType("tests")  # this repo's tests/, not a package's stray tests/
tests.__path__ = [sys.argv[-1].rsplit("/tests/", 1)[0] + "/tests"]
spec = importlib.util.spec_from_file_location("video_tests", sys.argv[-1])  # this test file, for its helpers
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
import numpy as np
from cloud.data.store import EpisodeStore
streams = {e: tests.encode(tests.scene(e, 150)) for e in range(3)}
store = EpisodeStore(sys.argv[1], chunk_rows=8)
store.ensure_dataset("arm", tests.SCHEMA)
rng = np.random.default_rng(int(sys.argv[2]))
while True:
    batches = []
    for e in rng.choice(3, size=2, replace=False).tolist():
        first = min(149, max(0, store.next_seq(f"ep{e}") - int(rng.integers(0, 3))))  # redeliveries too
        batches.append(tests.batch(e, streams[e], first, min(150, first + int(rng.integers(1, 12)))))
    acks = store.write(batches)
    print(" ".join(f"{k}={v}" for k, v in acks.items()), flush=True)
"""


def test_writer_killed_mid_write_loses_no_acked_frame(tmp_path) -> None:
    root, acked = tmp_path / "store", {}
    originals = {e: scene(e, 150) for e in range(3)}
    for attempt in range(2):
        proc = child(CRASHING_WRITER, root, attempt, helpers=__file__)
        read_acks(proc, 4 + 4 * attempt, acked)
        assert proc.poll() is None, "the writer died by itself"
        proc.send_signal(signal.SIGKILL)  # most likely in the middle of the next write
        proc.wait()
        with EpisodeStore(root, chunk_rows=8) as store:
            stored = {r.episode_id: r.num_steps for r in store.episodes("arm")}
            assert all(stored[e] >= n for e, n in acked.items()), (stored, acked)
            check_frames(store, originals)
            assert store.bad_frames == 0
