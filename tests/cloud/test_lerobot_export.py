"""Export to and import from LeRobotDataset v3, checked with lerobot's own LeRobotDataset reading real files."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the Hub: every dataset is a local directory

import av
import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from cloud.data.lerobot_export import META_FILE, Selection, export_lerobot
from cloud.data.lerobot_import import episode_id_for, import_lerobot, store_columns
from cloud.data.lerobot_video import mux, packet_features
from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
from protocol.steps import schema_for
from protocol.video import CameraEncoder, PacketColumn, psnr

IMAGE = (12, 10, 3)  # height, width, channels: not square, so a swapped axis shows
SCHEMA = {
    name: ColumnSpec(dtype, shape)
    for name, (dtype, shape) in schema_for(
        [("state", "float32", (3,)), ("pixels", "uint8", IMAGE)], ("float32", (2,))
    ).items()
}
# episode id, resource, steps, finished
EPISODES = [("ep-a", "robot-1", 5, True), ("ep-b", "robot-2", 7, True), ("ep-c", "robot-1", 4, True)]


def episode_columns(rng: np.random.Generator, n: int, version: int, done: bool) -> dict[str, np.ndarray]:
    last = np.arange(n) == n - 1
    return {
        "obs.state": rng.normal(size=(n, 3)).astype(np.float32),
        "obs.pixels": rng.integers(0, 256, (n, *IMAGE), dtype=np.uint8),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
        "reward": rng.normal(size=n).astype(np.float32),
        "done": last & done,
        "success": last & done & (version % 2 == 0),
        "intervention": rng.random(n) < 0.5,
        "policy_version": np.full(n, version, np.int64),
        "t_mono_ns": 5_000_000_000 + np.arange(n, dtype=np.int64) * 100_000_000,  # a 10 Hz control loop
    }


def build_store(root, unfinished: bool = True) -> tuple[EpisodeStore, dict[str, dict[str, np.ndarray]]]:
    """The store with EPISODES (and an unfinished one), written in interleaved batches as a gateway would."""
    store = EpisodeStore(root)
    store.ensure_dataset("toy", SCHEMA)
    rng = np.random.default_rng(7)
    written = {}
    episodes = EPISODES + ([("ep-open", "robot-2", 3, False)] if unfinished else [])
    for version, (episode_id, _, n, done) in enumerate(episodes):
        written[episode_id] = episode_columns(rng, n, version, done)
    # two batches per episode, all the first halves before the second halves: rows of episodes interleave
    for half in (0, 1):
        batches = []
        for episode_id, resource, n, _ in episodes:
            cut = n // 2
            rows = slice(0, cut) if half == 0 else slice(cut, n)
            columns = {k: v[rows] for k, v in written[episode_id].items()}
            task = f"task of {resource}"
            batches.append(StepRows("toy", episode_id, resource, "sim", task, rows.start, columns))
        store.write(batches)
    return store, written


def test_export_is_read_by_lerobot_frame_for_frame(tmp_path) -> None:
    store, written = build_store(tmp_path / "store")
    out = tmp_path / "lerobot"
    report = export_lerobot(store, "toy", out, repo_id="local/toy", progress=False)
    assert (report.episodes, report.frames, report.fps, report.fps_from) == (3, 16, 10, "t_mono_ns")

    dataset = LeRobotDataset("local/toy", root=out)
    assert dataset.meta.info.codebase_version == "v3.0"
    assert (dataset.num_episodes, dataset.num_frames, dataset.fps) == (3, 16, 10)  # the unfinished one is left out
    features = dataset.features
    assert features["observation.images.pixels"]["dtype"] == "image"
    assert tuple(features["observation.images.pixels"]["shape"]) == IMAGE
    assert tuple(features["observation.state"]["shape"]) == (3,) and tuple(features["action"]["shape"]) == (2,)
    assert features["policy_version"]["dtype"] == "int64" and features["intervention"]["dtype"] == "bool"
    assert features["resource_id"]["dtype"] == "string"
    assert dataset.meta.robot_type == "toy"

    meta = json.loads((out / META_FILE).read_text())
    assert [e["episode_id"] for e in meta["episodes"]] == ["ep-a", "ep-b", "ep-c"]
    assert meta["resource_ids"] == ["robot-1", "robot-2"] and meta["dataset"] == "toy"

    start = 0
    for index, (episode_id, resource, n, _) in enumerate(EPISODES):
        episode = dataset.meta.episodes[index]
        assert (episode["dataset_from_index"], episode["dataset_to_index"], episode["length"]) == (start, start + n, n)
        assert episode["tasks"] == [f"task of {resource}"]
        expected = written[episode_id]
        for i in range(n):
            frame = dataset[start + i]
            assert int(frame["episode_index"]) == index and int(frame["frame_index"]) == i
            assert float(frame["timestamp"]) == pytest.approx(i / 10)
            np.testing.assert_array_equal(frame["observation.state"].numpy(), expected["obs.state"][i])
            np.testing.assert_array_equal(frame["action"].numpy(), expected["action"][i])
            image = frame["observation.images.pixels"]  # lerobot hands images out as float CxHxW in [0, 1]
            assert tuple(image.shape) == (3, IMAGE[0], IMAGE[1])
            pixels = np.rint(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            np.testing.assert_array_equal(pixels, expected["obs.pixels"][i])  # PNG: lossless
            assert float(frame["next.reward"]) == expected["reward"][i]
            assert bool(frame["next.done"]) == expected["done"][i] == (i == n - 1)
            assert bool(frame["next.success"]) == expected["success"][i]
            assert bool(frame["intervention"]) == expected["intervention"][i]
            assert int(frame["policy_version"]) == index
            assert int(frame["t_mono_ns"]) == expected["t_mono_ns"][i]
            assert frame["resource_id"] == resource and frame["task"] == f"task of {resource}"
        start += n
    store.close()


def test_export_selects_by_resource_episode_and_source(tmp_path) -> None:
    store, written = build_store(tmp_path / "store")
    export_lerobot(store, "toy", tmp_path / "r1", selection=Selection(resource_ids=("robot-1",)), progress=False)
    dataset = LeRobotDataset("fleetloop/toy", root=tmp_path / "r1")
    assert dataset.num_episodes == 2 and dataset.num_frames == 5 + 4
    assert set(dataset.hf_dataset["resource_id"]) == {"robot-1"}
    np.testing.assert_array_equal(dataset[5]["action"].numpy(), written["ep-c"]["action"][0])

    selection = Selection(episode_ids=("ep-b", "ep-open"), unfinished=True)
    export_lerobot(store, "toy", tmp_path / "two", fps=25, selection=selection, progress=False)
    dataset = LeRobotDataset("fleetloop/toy", root=tmp_path / "two")
    assert (dataset.num_episodes, dataset.num_frames, dataset.fps) == (2, 7 + 3, 25)
    assert not dataset.hf_dataset["next.done"][-1]  # the unfinished episode, as it stands

    with pytest.raises(ValueError, match="^--source: no episode from source 'phone'"):
        export_lerobot(store, "toy", tmp_path / "x", selection=Selection(sources=("phone",)), progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"dataset": "nope"}, "^--dataset: no dataset 'nope'"),
        ({"selection": Selection(episode_ids=("ep-z",))}, "^--episodes: no episode 'ep-z'"),
        ({"selection": Selection(episode_ids=("ep-open",))}, "^--episodes: episode 'ep-open' has not finished"),
        ({"selection": Selection(resource_ids=("robot-9",))}, "^--resource: no episode of resource 'robot-9'"),
        ({"repo_id": "no-owner"}, "^--repo-id: 'no-owner' must look like 'owner/name'"),
        ({"fps": 0}, "^--fps: must be a whole number"),
        ({"video": True}, "^--video: obs.pixels is 12x10"),
        ({"out": "exists"}, "^--out: .* already exists"),
    ],
)
def test_export_errors_name_the_flag(tmp_path, kwargs, error) -> None:
    store, _ = build_store(tmp_path / "store")
    (tmp_path / "exists").mkdir()
    args = {"dataset": "toy", "out": tmp_path / "new"} | kwargs
    if args["out"] == "exists":
        args["out"] = tmp_path / "exists"
    with pytest.raises(ValueError, match=error):
        export_lerobot(store, progress=False, **args)
    assert not (tmp_path / "new").exists()


def test_export_needs_fps_when_the_steps_carry_no_timing(tmp_path) -> None:
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("toy", SCHEMA)
    columns = episode_columns(np.random.default_rng(0), 4, 0, True)
    columns["t_mono_ns"] = np.zeros(4, np.int64)
    store.write([StepRows("toy", "e", "r", "sim", "t", 0, columns)])
    with pytest.raises(ValueError, match="^--fps: .* pass --fps"):
        export_lerobot(store, "toy", tmp_path / "out", progress=False)
    assert export_lerobot(store, "toy", tmp_path / "out", fps=15, progress=False).fps == 15


def test_import_brings_an_export_back_as_demonstrations_once(tmp_path) -> None:
    source, written = build_store(tmp_path / "store")
    export_lerobot(source, "toy", tmp_path / "lerobot", repo_id="lab/toy", progress=False)

    store = EpisodeStore(tmp_path / "fresh")
    report = import_lerobot(store, tmp_path / "lerobot", progress=False)
    assert (report.dataset, report.repo_id, report.resource_id) == ("toy", "lab/toy", "import:lab/toy")
    assert (report.episodes, report.imported, report.skipped, report.steps) == (3, 3, 0, 16)
    assert report.columns["observation.images.pixels"] == "obs.pixels"
    assert set(report.ignored) == {"intervention", "policy_version", "resource_id"}
    assert store.schema("toy") == source.schema("toy")

    episodes = store.episodes("toy")
    assert [e.episode_id for e in episodes] == [episode_id_for("lab/toy", i) for i in range(3)]
    assert {(e.source, e.resource_id) for e in episodes} == {("import", "import:lab/toy")}
    assert [e.task for e in episodes] == ["task of robot-1", "task of robot-2", "task of robot-1"]
    assert all(e.done and e.intervention_steps == e.num_steps for e in episodes)
    for record, (episode_id, _, n, _) in zip(episodes, EPISODES, strict=True):
        rows = store.row_indices("toy", record.episode_id)
        data = {k: v[rows] for k, v in store.read("toy").items()}
        expected = written[episode_id]
        assert len(rows) == n and (data["seq"] == np.arange(n)).all()
        for column in ("obs.state", "obs.pixels", "action", "reward", "done", "success", "t_mono_ns"):
            np.testing.assert_array_equal(data[column], expected[column], err_msg=column)
        assert data["intervention"].all() and (data["policy_version"] == 0).all()

    rows = store.committed_rows("toy")
    again = import_lerobot(store, tmp_path / "lerobot", progress=False)
    assert (again.imported, again.skipped, again.steps) == (0, 3, 0)
    assert store.committed_rows("toy") == rows and len(store.episodes("toy")) == 3
    store.close()
    reopened = EpisodeStore(tmp_path / "fresh", read_only=True)  # and from disk, as another process sees it
    assert reopened.committed_rows("toy") == rows
    source.close()


def test_import_reads_a_dataset_written_by_lerobot_itself(tmp_path) -> None:
    """A dataset with lerobot's own conventions (channels-first image, no fleetloop features) becomes demos."""
    features = {
        "observation.state": {"dtype": "float32", "shape": (4,), "names": ["a", "b", "c", "d"]},
        "observation.image": {"dtype": "image", "shape": (3, 8, 6), "names": ["channels", "height", "width"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    }
    root = tmp_path / "theirs"
    writer = LeRobotDataset.create("someone/pushish", fps=5, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(3)
    frames = []
    for length in (4, 6):
        for _ in range(length):
            frame = {
                "observation.state": rng.normal(size=4).astype(np.float32),
                "observation.image": rng.integers(0, 256, (3, 8, 6), dtype=np.uint8),
                "action": rng.normal(size=2).astype(np.float32),
                "next.reward": np.array([1.5], np.float32),
                "task": "push the block",
            }
            frames.append({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in frame.items()})
            writer.add_frame(frame)
        writer.save_episode()
    writer.finalize()

    store = EpisodeStore(tmp_path / "store")
    report = import_lerobot(store, root, repo_id="someone/pushish", resource_id="lab-demos", progress=False)
    assert report.dataset == "pushish" and report.steps == 10
    schema = store.schema("pushish")
    assert schema["obs.image"] == ColumnSpec("|u1", (8, 6, 3)) and schema["obs.state"] == ColumnSpec("<f4", (4,))
    data = store.read("pushish")
    order = np.concatenate([store.row_indices("pushish", episode_id_for("someone/pushish", i)) for i in (0, 1)])
    for row, frame in zip(order, frames, strict=True):
        np.testing.assert_array_equal(data["obs.state"][row], frame["observation.state"])
        np.testing.assert_array_equal(data["obs.image"][row], np.moveaxis(frame["observation.image"], 0, -1))
        np.testing.assert_array_equal(data["action"][row], frame["action"])
        assert data["reward"][row] == 1.5
    assert data["done"][order].tolist() == [False] * 3 + [True] + [False] * 5 + [True]
    assert data["t_mono_ns"][order][:4].tolist() == [0, 200_000_000, 400_000_000, 600_000_000]  # 5 fps
    assert {e.resource_id for e in store.episodes("pushish")} == {"lab-demos"}
    store.close()


def test_import_errors_name_the_flag(tmp_path) -> None:
    source, _ = build_store(tmp_path / "store")
    export_lerobot(source, "toy", tmp_path / "lerobot", progress=False)
    store = EpisodeStore(tmp_path / "fresh")
    with pytest.raises(ValueError, match="^--from: .* is not a local LeRobotDataset"):
        import_lerobot(store, tmp_path / "nothing", progress=False)
    with pytest.raises(ValueError, match="^--dataset: 'no good' must be"):
        import_lerobot(store, tmp_path / "lerobot", dataset="no good", progress=False)
    other = {**SCHEMA, "obs.state": ColumnSpec("<f4", (5,))}
    store.ensure_dataset("arm", other)
    with pytest.raises(ValueError, match="^--dataset: arm cannot hold .*obs.state"):
        import_lerobot(store, tmp_path / "lerobot", dataset="arm", progress=False)
    import_lerobot(store, tmp_path / "lerobot", dataset="toy2", progress=False)
    with pytest.raises(ValueError, match="^--dataset: episode 0 of fleetloop/toy is already in dataset toy2"):
        import_lerobot(store, tmp_path / "lerobot", dataset="toy3", progress=False)
    store.close()
    source.close()


def test_scalar_columns_go_out_as_lerobot_shape_one_and_come_back_scalar(tmp_path) -> None:
    schema = schema_for([("speed", "float32", ()), ("state", "float64", (2,))], ("float32", ()))
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("cart", {k: ColumnSpec(d, s) for k, (d, s) in schema.items()})
    columns = episode_columns(np.random.default_rng(1), 6, 0, True)
    columns = {k: v for k, v in columns.items() if not k.startswith("obs.")} | {
        "obs.speed": np.linspace(0, 1, 6, dtype=np.float32),
        "obs.state": np.arange(12, dtype=np.float64).reshape(6, 2),
        "action": np.linspace(-1, 1, 6, dtype=np.float32),
    }
    store.write([StepRows("cart", "e", "r", "robot", "roll", 0, columns)])
    export_lerobot(store, "cart", tmp_path / "out", progress=False)
    dataset = LeRobotDataset("fleetloop/cart", root=tmp_path / "out")
    assert tuple(dataset.features["observation.speed"]["shape"]) == (1,)
    assert dataset.features["observation.state"]["dtype"] == "float64"
    assert tuple(dataset.features["action"]["shape"]) == (1,)

    fresh = EpisodeStore(tmp_path / "fresh")
    import_lerobot(fresh, tmp_path / "out", progress=False)
    assert fresh.schema("cart") == store.schema("cart")
    back = fresh.read("cart")
    for column in ("obs.speed", "obs.state", "action"):
        np.testing.assert_array_equal(back[column], columns[column], err_msg=column)
    fresh.close()
    store.close()


def test_an_encoded_camera_column_exports_as_its_decoded_frames(tmp_path) -> None:
    """An H.264 camera in the store goes out as frames lerobot reads, within the codec's loss of what was filmed."""
    from protocol.video import CameraEncoder, PacketColumn, psnr
    from tests.protocol.test_video import moving_scene

    height, width = 48, 64
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("toy", {**SCHEMA, "obs.pixels": ColumnSpec("|u1", (height, width, 3), "h264")})
    rng = np.random.default_rng(3)
    filmed = {}
    for half in (0, 1):  # two episodes whose rows interleave, as a gateway writes them
        batches = []
        for k, episode_id in enumerate(["ep-a", "ep-b"]):
            if half == 0:
                filmed[episode_id] = moving_scene(12 + 5 * k, height, width)[5 * k :]
                encoder = CameraEncoder("h264", width, height, 10, gop=4)
                packets = [p for frame in filmed[episode_id] for p in encoder.encode(frame)]
                filmed[episode_id + "/packets"] = PacketColumn(
                    "h264", tuple(p.data for p in packets), np.array([p.keyframe for p in packets])
                )
            columns = episode_columns(rng, 12, 0, True)
            columns["obs.pixels"] = filmed[episode_id + "/packets"]
            rows = slice(0, 5) if half == 0 else slice(5, 12)
            batch = {name: values[rows] for name, values in columns.items()}
            batches.append(StepRows("toy", episode_id, "robot-1", "sim", "pick", rows.start, batch))
        store.write(batches)
    out = tmp_path / "lerobot"
    export_lerobot(store, "toy", out, repo_id="local/toy", progress=False)
    dataset = LeRobotDataset("local/toy", root=out)
    assert dataset.num_frames == 24
    for index in range(24):
        image = dataset[index]["observation.images.pixels"]
        pixels = np.rint(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        original = filmed[["ep-a", "ep-b"][index // 12]][index % 12]
        assert psnr(original, pixels) >= 35, index
    assert store.bad_frames == 0
    store.close()


# --- encoded cameras: the stored packets become the video files (and come back) without decoding ---

CAMERA = (48, 64, 3)  # whole 16-pixel blocks, so the stored H.264 is the picture lerobot reads
VIDEO_SCHEMA = {**SCHEMA, "obs.pixels": ColumnSpec("|u1", CAMERA, "h264")}
VIDEO_EPISODES = [("ep-a", "robot-1", 12), ("ep-b", "robot-2", 9), ("ep-c", "robot-1", 14)]


def scene(n: int, phase: int) -> np.ndarray:
    """A smooth moving picture (a gradient and a bright square sliding across), not noise."""
    y, x = np.mgrid[: CAMERA[0], : CAMERA[1]]
    frames = np.zeros((n, *CAMERA), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (x * 3 + i * 4 + phase * 40) % 256
        frames[i, ..., 1] = (y * 4 + phase * 20) % 256
        frames[i, ..., 2] = 90
        top, left = (i * 2 + phase) % 30, (i * 3 + phase * 7) % 44
        frames[i, top : top + 16, left : left + 16] = 240
    return frames


def build_video_store(root) -> tuple[EpisodeStore, dict[str, PacketColumn]]:
    """A store whose camera is H.264 (a keyframe every 5 steps), episodes written interleaved as a gateway does."""
    store = EpisodeStore(root)
    store.ensure_dataset("cam", VIDEO_SCHEMA)
    rng = np.random.default_rng(3)
    columns, packets = {}, {}
    for phase, (episode_id, _, n) in enumerate(VIDEO_EPISODES):
        encoder = CameraEncoder("h264", CAMERA[1], CAMERA[0], 10, gop=5)
        coded = [p for frame in scene(n, phase) for p in encoder.encode(frame)] + encoder.flush()
        packets[episode_id] = PacketColumn("h264", tuple(p.data for p in coded), np.array([p.keyframe for p in coded]))
        columns[episode_id] = {k: v for k, v in episode_columns(rng, n, phase, True).items() if k != "obs.pixels"}
    for half in (0, 1):
        batches = []
        for episode_id, resource, n in VIDEO_EPISODES:
            rows = slice(0, n // 2) if half == 0 else slice(n // 2, n)
            part = {k: v[rows] for k, v in columns[episode_id].items()} | {"obs.pixels": packets[episode_id][rows]}
            batches.append(StepRows("cam", episode_id, resource, "sim", "pick", rows.start, part))
        store.write(batches)
    return store, packets


def mp4_annexb_packets(path) -> list[bytes]:
    """Every packet of an MP4's video stream, as H.264 Annex B (the store's form), read with PyAV alone."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        bsf = av.BitStreamFilterContext("h264_mp4toannexb", stream)
        return [bytes(p) for packet in container.demux(stream) if packet.size for p in bsf.filter(packet)]


def test_h264_camera_is_exported_as_its_stored_packets(tmp_path) -> None:
    store, packets = build_video_store(tmp_path / "store")
    out = tmp_path / "lerobot"
    report = export_lerobot(store, "cam", out, repo_id="local/cam", progress=False)
    assert (report.episodes, report.frames) == (3, 35)

    info = json.loads((out / "meta/info.json").read_text())
    feature = info["features"]["observation.images.pixels"]
    assert feature["dtype"] == "video" and feature["info"]["video.codec"] == "h264"
    videos = sorted((out / "videos/observation.images.pixels").rglob("*.mp4"))
    assert len(videos) == 1  # lerobot joined the three episodes into one file, by remuxing
    stored = [p for episode_id, _, _ in VIDEO_EPISODES for p in packets[episode_id].packets]
    assert mp4_annexb_packets(videos[0]) == stored  # byte for byte: nothing was decoded or encoded

    dataset = LeRobotDataset("local/cam", root=out)
    starts = np.cumsum([0] + [n for _, _, n in VIDEO_EPISODES])
    for index, (episode_id, _, n) in enumerate(VIDEO_EPISODES):
        episode = dataset.meta.episodes[index]
        assert episode["videos/observation.images.pixels/from_timestamp"] == pytest.approx(starts[index] / 10)
        assert episode["videos/observation.images.pixels/to_timestamp"] == pytest.approx(starts[index + 1] / 10)
        record = store.episode(episode_id)
        rows = np.flatnonzero(store.read("cam", ["episode_index"])["episode_index"] == record.index)
        expected = store.read("cam", ["obs.pixels"])["obs.pixels"][rows]  # the store's own decoding
        for i in range(n):
            frame = dataset[int(starts[index]) + i]["observation.images.pixels"].numpy()
            got = np.clip(np.rint(np.moveaxis(frame, 0, -1) * 255), 0, 255).astype(np.uint8)
            assert psnr(expected[i], got) >= 45, (episode_id, i)


def test_h264_export_imports_back_as_the_same_packets(tmp_path) -> None:
    store, packets = build_video_store(tmp_path / "store")
    out = tmp_path / "lerobot"
    export_lerobot(store, "cam", out, repo_id="local/cam", progress=False)
    back = EpisodeStore(tmp_path / "back")
    report = import_lerobot(back, out, progress=False)
    assert (report.imported, report.steps) == (3, 35)
    assert back.schema("cam")["obs.pixels"].codec == "h264"  # kept encoded, not decoded into raw frames
    index = back.read("cam", ["episode_index"])["episode_index"]
    stored = back.read_packets("cam", "obs.pixels")
    for number, (episode_id, _, n) in enumerate(VIDEO_EPISODES):
        rows = np.flatnonzero(index == back.episode(episode_id_for("local/cam", number)).index)
        assert len(rows) == n
        assert [stored.packets[r] for r in rows] == list(packets[episode_id].packets)  # byte for byte
        assert stored.keyframe[rows].tolist() == packets[episode_id].keyframe.tolist()
    state = back.read("cam", ["obs.state"])["obs.state"]
    assert state.shape == (35, 3)


def test_av1_camera_round_trips_as_its_packets(tmp_path) -> None:
    """AV1 packets lose their temporal delimiter in the MP4 (ISO-BMFF forbids it) and get it back on import."""
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("cam", {**SCHEMA, "obs.pixels": ColumnSpec("|u1", CAMERA, "av1")})
    encoder = CameraEncoder("av1", CAMERA[1], CAMERA[0], 10, gop=4)
    coded = [p for frame in scene(10, 0) for p in encoder.encode(frame)] + encoder.flush()
    packets = PacketColumn("av1", tuple(p.data for p in coded), np.array([p.keyframe for p in coded]))
    columns = {k: v for k, v in episode_columns(np.random.default_rng(1), 10, 0, True).items() if k != "obs.pixels"}
    store.write([StepRows("cam", "ep-av1", "robot-1", "sim", "pick", 0, columns | {"obs.pixels": packets})])
    out = tmp_path / "lerobot"
    export_lerobot(store, "cam", out, repo_id="local/av1", progress=False)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["features"]["observation.images.pixels"]["info"]["video.codec"] == "av1"
    frame = LeRobotDataset("local/av1", root=out)[9]["observation.images.pixels"].numpy()
    got = np.clip(np.rint(np.moveaxis(frame, 0, -1) * 255), 0, 255).astype(np.uint8)
    assert psnr(store.read("cam", ["obs.pixels"])["obs.pixels"][9], got) >= 45
    back = EpisodeStore(tmp_path / "back")
    import_lerobot(back, out, progress=False)
    assert back.schema("cam")["obs.pixels"].codec == "av1"
    assert back.read_packets("cam", "obs.pixels").packets == packets.packets


def test_video_with_an_episode_starting_between_keyframes_is_imported_decoded(tmp_path, caplog) -> None:
    """The MP4 is one H.264 stream over all three episodes, keyframes every 12 frames: the third episode (from frame
    21) starts between keyframes, so that camera cannot be kept as packets and is decoded instead."""
    store, _ = build_video_store(tmp_path / "store")
    out = tmp_path / "lerobot"
    export_lerobot(store, "cam", out, repo_id="local/cam", progress=False)
    video = next((out / "videos/observation.images.pixels").rglob("*.mp4"))
    encoder = CameraEncoder("h264", CAMERA[1], CAMERA[0], 10, gop=12)
    coded = [p for frame in scene(35, 0) for p in encoder.encode(frame)] + encoder.flush()
    mux(PacketColumn("h264", tuple(p.data for p in coded), np.array([p.keyframe for p in coded])), 10, video)
    back = EpisodeStore(tmp_path / "back")
    with caplog.at_level("INFO", logger="fleetloop"):
        report = import_lerobot(back, out, progress=False)
    assert report.kept_encoded == {} and back.schema("cam")["obs.pixels"].codec == ""
    assert "video observation.images.pixels is decoded into frames (episode 2 starts between keyframes)" in caplog.text
    frames = back.read("cam", ["obs.pixels"])["obs.pixels"]
    assert frames.shape == (35, *CAMERA)
    assert min(psnr(scene(35, 0)[i], frames[i]) for i in (0, 21, 34)) >= 30  # the frames lerobot decoded


def test_raw_camera_beside_an_h264_one_is_encoded_by_lerobot(tmp_path) -> None:
    """With --video, a raw camera goes to lerobot's own AV1 encoder while the H.264 one keeps its packets."""
    store = EpisodeStore(tmp_path / "store")
    wrist = ColumnSpec("|u1", (32, 32, 3))
    store.ensure_dataset("cam", {**VIDEO_SCHEMA, "obs.wrist": wrist})
    encoder = CameraEncoder("h264", CAMERA[1], CAMERA[0], 10, gop=5)
    coded = [p for frame in scene(8, 0) for p in encoder.encode(frame)] + encoder.flush()
    packets = PacketColumn("h264", tuple(p.data for p in coded), np.array([p.keyframe for p in coded]))
    columns = {k: v for k, v in episode_columns(np.random.default_rng(2), 8, 0, True).items() if k != "obs.pixels"}
    columns |= {"obs.pixels": packets, "obs.wrist": scene(8, 1)[:, :32, :32]}
    store.write([StepRows("cam", "ep-mixed", "robot-1", "sim", "pick", 0, columns)])
    out = tmp_path / "lerobot"
    report = export_lerobot(store, "cam", out, repo_id="local/mixed", video=True, progress=False)
    assert report.kept_encoded == {"obs.pixels": "h264"}
    features = json.loads((out / "meta/info.json").read_text())["features"]
    assert features["observation.images.pixels"]["info"]["video.codec"] == "h264"
    assert features["observation.images.wrist"]["info"]["video.codec"] == "av1"
    assert mp4_annexb_packets(next((out / "videos/observation.images.pixels").rglob("*.mp4"))) == list(packets.packets)
    item = LeRobotDataset("local/mixed", root=out)[7]
    got = np.clip(np.rint(np.moveaxis(item["observation.images.wrist"].numpy(), 0, -1) * 255), 0, 255)
    assert psnr(scene(8, 1)[7, :32, :32], got.astype(np.uint8)) >= 30  # lossy AV1 from lerobot, still the frame


def test_video_whose_file_disagrees_with_info_json_is_not_kept_as_packets(tmp_path, caplog) -> None:
    """A dataset's info.json says 64x48 H.264 but the file holds 32x32: its packets would not be the camera."""
    store, _ = build_video_store(tmp_path / "store")
    out = tmp_path / "lerobot"
    export_lerobot(store, "cam", out, repo_id="local/cam", progress=False)
    video = next((out / "videos/observation.images.pixels").rglob("*.mp4"))
    encoder = CameraEncoder("h264", 32, 32, 10, gop=5)
    coded = [p for frame in scene(35, 0)[:, :32, :32] for p in encoder.encode(frame)] + encoder.flush()
    mux(PacketColumn("h264", tuple(p.data for p in coded), np.array([p.keyframe for p in coded])), 10, video)
    dataset = LeRobotDataset("local/cam", root=out)
    columns, schema, _ = store_columns(dataset.features)
    with caplog.at_level("INFO", logger="fleetloop"):
        assert packet_features(dataset, columns, schema) == {}
    assert "is decoded into frames (file-000.mp4 holds h264 32x32)" in caplog.text
