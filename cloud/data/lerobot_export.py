"""Export: episodes of the store as a LeRobotDataset v3, written by lerobot's own writer.

``export_lerobot`` writes a selection of one store dataset (by default every finished episode no person discarded
as re-recorded; a discarded one goes only when ``--episodes`` names it) to a new local
directory through ``LeRobotDataset.create`` + ``add_frame``/``save_episode``/``finalize``, so lerobot's readers,
``lerobot-train`` included, take it as their own. One store row becomes one frame:

| store column            | LeRobotDataset feature                     |
|-------------------------|--------------------------------------------|
| ``obs.state``           | ``observation.state``                      |
| ``obs.<n>``, uint8 HxWx3| ``observation.images.<n>`` (image, or video with ``video=True``) |
| ``obs.<n>``, other      | ``observation.<n>``                        |
| ``action``              | ``action``                                 |
| ``reward``/``done``/``success`` | ``next.reward``/``next.done``/``next.success`` (lerobot's names) |
| ``intervention``        | ``intervention`` (bool)                    |
| ``policy_version``      | ``policy_version`` (int64)                 |
| ``t_mono_ns``           | ``t_mono_ns`` (int64, the producing host's monotonic clock) |
| episode's resource id   | ``resource_id`` (a per-frame string feature, which lerobot 0.6.1 supports) |
| episode's task          | the frame's ``task`` (lerobot's task index) |

Scalars become shape ``(1,)`` features, as lerobot stores them. A camera the store keeps as H.264 or AV1 packets
(sides in whole 16-pixel blocks) becomes a video feature whose MP4s are those packets, remuxed: nothing is decoded
or re-encoded, so the frames lerobot reads are the ones the store's decoder gives (``cloud.data.lerobot_video``).
Other images are stored as PNG frames embedded in the parquet files by default: lossless, so values read back
equal what the store holds (a JPEG camera: its decoded frames). ``video=True`` encodes them with lerobot's default
AV1 encoder instead (lossy; measured here to need frames of at least 32x32: SVT-AV1 killed the process with SIGFPE
on 16x16 ones). The log says which way each camera goes.

The store does not keep a resource's control rate, so ``fps`` is the caller's, or else derived from the steps'
``t_mono_ns`` (the edge stamps each tick of its fixed-rate loop): the median step interval, rounded to whole
frames per second. Next to lerobot's metadata, ``meta/fleetloop.json`` records where the export came from, the
column-to-feature map, the resource ids, and per LeRobot episode index the store's episode id, resource id,
source, task and a person's label (and who gave it), so an import can tell its own exports apart.

Errors are ValueErrors that start with the ``fleetloop export`` flag they concern (``--episodes``, ``--fps``...).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud.data.lerobot_progress import datasets_bars_off, episode_bar
from cloud.data.lerobot_video import PacketMuxer, why_not_passthrough
from cloud.data.store import EpisodeRecord, EpisodeStore
from protocol.video import PacketColumn

log = logging.getLogger("fleetloop")

META_FILE = "meta/fleetloop.json"  # fleetloop's provenance, next to lerobot's info.json
META_FORMAT = 1
STEP_FEATURES = {  # store column -> lerobot feature, for the provenance every step carries
    "reward": "next.reward",
    "done": "next.done",
    "success": "next.success",
    "intervention": "intervention",
    "policy_version": "policy_version",
    "t_mono_ns": "t_mono_ns",
}
RESOURCE_FEATURE = "resource_id"
IMAGE_PREFIX = "observation.images."
MIN_VIDEO_SIDE = 32
MAX_FPS = 1000
STREAM_INFO = {  # what lerobot's get_video_info reads from a video file itself
    "video.height",
    "video.width",
    "video.codec",
    "video.pix_fmt",
    "video.fps",
    "video.channels",
    "has_audio",
    "is_depth_map",
}


@dataclass(frozen=True)
class Selection:
    """Which episodes to export: all given filters must hold (an empty one holds for every episode)."""

    episode_ids: tuple[str, ...] = ()
    resource_ids: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    unfinished: bool = False  # also episodes whose last step is not done


@dataclass
class ExportReport:
    out: Path
    repo_id: str
    dataset: str
    fps: int
    fps_from: str  # "flag" or "t_mono_ns"
    episodes: int
    frames: int
    features: dict[str, str] = field(default_factory=dict)  # store column -> lerobot feature
    kept_encoded: dict[str, str] = field(default_factory=dict)  # store column -> codec its video file keeps


def is_image(dtype: str, shape: tuple[int, ...]) -> bool:
    return np.dtype(dtype) == np.uint8 and len(shape) == 3 and shape[2] == 3


def feature_of(column: str, dtype: str, shape: tuple[int, ...]) -> str:
    """The LeRobotDataset feature a store observation, the action, or a provenance column becomes."""
    if column == "action":
        return "action"
    if column in STEP_FEATURES:
        return STEP_FEATURES[column]
    if column.startswith("meta."):  # what the cloud noted about a step (e.g. meta.foresight_error) keeps its name
        return column
    name = column.removeprefix("obs.")
    return f"{IMAGE_PREFIX}{name}" if is_image(dtype, shape) else f"observation.{name}"


def lerobot_features(schema: dict, video: bool, packets: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """lerobot's feature spec for a store schema (see the module docstring), keyed by lerobot feature; the
    columns in ``packets`` become videos whatever ``video`` says (their stored packets are the video)."""
    features: dict[str, dict[str, Any]] = {}
    for column, spec in schema.items():
        if column in ("seq", "episode_index"):
            continue
        name = feature_of(column, spec.dtype, spec.shape)
        if is_image(spec.dtype, spec.shape):
            features[name] = {
                "dtype": "video" if video or column in packets else "image",
                "shape": tuple(spec.shape),
                "names": ["height", "width", "channels"],
            }
        else:
            features[name] = {"dtype": np.dtype(spec.dtype).name, "shape": tuple(spec.shape) or (1,), "names": None}
    features[RESOURCE_FEATURE] = {"dtype": "string", "shape": (1,), "names": None}
    return features


def select_episodes(store: EpisodeStore, dataset: str, selection: Selection) -> list[EpisodeRecord]:
    """The selected episodes in store order; ValueError naming the flag whose value matches nothing."""
    if dataset not in store.datasets():
        known = ", ".join(store.datasets()) or "none"
        raise ValueError(f"--dataset: no dataset {dataset!r} in the store at {store.root} (it has: {known})")
    episodes = store.episodes(dataset)
    by_id = {e.episode_id: e for e in episodes}
    for episode_id in selection.episode_ids:
        if episode_id not in by_id:
            raise ValueError(f"--episodes: no episode {episode_id!r} in dataset {dataset}")
    resources = {e.resource_id for e in episodes}
    for resource_id in selection.resource_ids:
        if resource_id not in resources:
            raise ValueError(f"--resource: no episode of resource {resource_id!r} in dataset {dataset}")
    sources = {e.source for e in episodes}
    for source in selection.sources:
        if source not in sources:
            raise ValueError(f"--source: no episode from source {source!r} in dataset {dataset}")
    chosen = [
        e
        for e in episodes
        if e.num_steps > 0
        and (not selection.episode_ids or e.episode_id in selection.episode_ids)
        and (not e.discarded or e.episode_id in selection.episode_ids)
        and (not selection.resource_ids or e.resource_id in selection.resource_ids)
        and (not selection.sources or e.source in selection.sources)
    ]
    if not selection.unfinished:
        unfinished = [e.episode_id for e in chosen if not e.done]
        if selection.episode_ids and unfinished:
            raise ValueError(
                f"--episodes: episode {unfinished[0]!r} has not finished (pass --include-unfinished to export it)"
            )
        chosen = [e for e in chosen if e.done]
    if not chosen:
        raise ValueError(
            f"--dataset: no {'' if selection.unfinished else 'finished '}episode of {dataset} matches the selection"
        )
    return chosen


def _rows_by_episode(store: EpisodeStore, dataset: str, wanted: list[EpisodeRecord]) -> dict[int, np.ndarray]:
    """Committed row numbers of each wanted episode (by episode_index), in seq order."""
    both = store.read(dataset, ["episode_index", "seq"])
    index = both["episode_index"]
    # by seq within an episode: the rows of one that several gateways stored may come in another order
    order = np.lexsort((both["seq"], index))
    groups, starts, counts = np.unique(index[order], return_index=True, return_counts=True)
    where = {int(g): order[s : s + c] for g, s, c in zip(groups, starts, counts, strict=True)}
    return {e.index: where.get(e.index, np.zeros(0, np.int64)) for e in wanted}


def infer_fps(store: EpisodeStore, dataset: str, rows: dict[int, np.ndarray]) -> int:
    """Frames per second from the median interval between consecutive steps' t_mono_ns."""
    stamps = store.read(dataset, ["t_mono_ns"])["t_mono_ns"]
    gaps = np.concatenate([np.diff(stamps[r]) for r in rows.values() if len(r) > 1] or [np.zeros(0, np.int64)])
    gaps = gaps[gaps > 0]
    if len(gaps) == 0:
        raise ValueError("--fps: the selected episodes have no step timestamps to derive a frame rate from; pass --fps")
    fps = round(1e9 / float(np.median(gaps)))
    if not 1 <= fps <= MAX_FPS:
        raise ValueError(
            f"--fps: the steps' t_mono_ns give {1e9 / float(np.median(gaps)):.3g} steps/s, not a control rate "
            f"(1-{MAX_FPS} Hz); pass --fps"
        )
    return fps


def _read_episode(store: EpisodeStore, dataset: str, rows: np.ndarray, columns: list[str]) -> dict[str, np.ndarray]:
    lo, hi = int(rows.min()), int(rows.max()) + 1
    block = store.read(dataset, columns, start=lo, stop=hi)
    return {name: values[rows - lo] for name, values in block.items()}


def _check_arguments(out: Path, repo_id: str, fps: int | None) -> None:
    """Refuses, before anything is read, the flags whose value alone is wrong."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"--repo-id: {repo_id!r} must look like 'owner/name'")
    if out.exists():
        raise ValueError(f"--out: {out} already exists; lerobot writes a dataset only into a new directory")
    if fps is not None and not 1 <= int(fps) <= MAX_FPS:
        raise ValueError(f"--fps: must be a whole number of frames per second in 1-{MAX_FPS}, got {fps}")


def _check_video_sizes(schema: dict, packets: frozenset[str]) -> None:
    """Refuses images the AV1 encoder cannot take (see the module docstring)."""
    small = [
        c
        for c, s in schema.items()
        if is_image(s.dtype, s.shape) and c not in packets and min(s.shape[:2]) < MIN_VIDEO_SIDE
    ]
    if small:
        raise ValueError(
            f"--video: {small[0]} is {schema[small[0]].shape[0]}x{schema[small[0]].shape[1]}; the AV1 encoder "
            f"needs at least {MIN_VIDEO_SIDE}x{MIN_VIDEO_SIDE} (export without --video to store images)"
        )


def _packet_columns(schema: dict, video: bool) -> frozenset[str]:
    """The encoded cameras whose stored packets become the video files as they are; says in the log what happens
    to every camera."""
    kept = set()
    for column, spec in schema.items():
        if not is_image(spec.dtype, spec.shape):
            continue
        reason = why_not_passthrough(spec)
        if not reason:
            kept.add(column)
            log.info("export: camera %s goes into the video files as its stored %s packets", column, spec.codec)
        elif video:
            log.info("export: camera %s is decoded and re-encoded by lerobot as AV1 (%s)", column, reason)
        else:
            log.info("export: camera %s is written as PNG images (%s; --video encodes it as AV1)", column, reason)
    return frozenset(kept)


@dataclass(frozen=True)
class _Plan:
    """What to write: where, at which rate, which episodes and rows, and which column becomes which feature."""

    out: Path
    repo_id: str
    dataset: str
    fps: int
    video: bool
    episodes: list[EpisodeRecord]
    rows: dict[int, np.ndarray]
    schema: dict
    names: dict[str, str]  # store column -> lerobot feature, in schema order
    packets: frozenset[str] = frozenset()  # encoded columns whose stored packets become the video files


def _add_episode(store: EpisodeStore, plan: _Plan, record: EpisodeRecord, lerobot: Any) -> int:
    """Adds one store episode to ``lerobot`` as one LeRobot episode; returns its frame count."""
    rows = plan.rows[record.index]
    data = _read_episode(store, plan.dataset, rows, list(plan.names))
    if plan.packets:
        lo, hi = int(rows.min()), int(rows.max()) + 1
        muxer = lerobot.writer._streaming_encoder  # the PacketMuxer _create put there
        muxer.load({plan.names[c]: _episode_packets(store, plan.dataset, c, rows, lo, hi) for c in plan.packets})
    for i in range(len(rows)):
        frame: dict[str, Any] = {"task": record.task or plan.dataset, RESOURCE_FEATURE: record.resource_id}
        for column, feature in plan.names.items():
            value = data[column][i]
            frame[feature] = value if value.ndim else value.reshape(1)
        lerobot.add_frame(frame)
    lerobot.save_episode()
    return len(rows)


def _episode_packets(store: EpisodeStore, dataset: str, column: str, rows: np.ndarray, lo: int, hi: int) -> Any:
    """An episode's stored packets of one camera, in its step order (its rows interleave with other episodes')."""
    stored = store.read_packets(dataset, column, lo, hi)
    picked = rows - lo
    return PacketColumn(stored.codec, tuple(stored.packets[i] for i in picked), stored.keyframe[picked])


def _create(plan: _Plan) -> Any:
    """lerobot's writer for the plan; with a ``PacketMuxer`` for its video files when cameras keep their packets."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    images = [c for c in plan.names if is_image(plan.schema[c].dtype, plan.schema[c].shape)]
    longest = max(len(r) for r in plan.rows.values())
    lerobot = LeRobotDataset.create(
        plan.repo_id,
        fps=plan.fps,
        features=lerobot_features(plan.schema, plan.video, plan.packets),
        root=plan.out,
        robot_type=plan.dataset,
        use_videos=plan.video or bool(plan.packets),
        image_writer_threads=4 if images else 0,
        streaming_encoding=bool(plan.packets),
        encoder_queue_maxsize=longest + 1,  # lerobot's streaming encoder drops frames when its queue is full
    )
    if plan.packets:
        # lerobot 0.6.1's writer takes any object with StreamingVideoEncoder's methods as its streaming encoder
        keys = [plan.names[c] for c in plan.packets]
        lerobot.writer._streaming_encoder = PacketMuxer(plan.fps, keys, lerobot.writer._streaming_encoder)
    return lerobot


def _write_frames(store: EpisodeStore, plan: _Plan, progress: bool) -> int:
    """Writes every planned episode through lerobot's writer; returns the frame count. Removes ``out`` on failure."""
    frames = 0
    try:
        with datasets_bars_off():
            lerobot = _create(plan)
            with episode_bar("export", "frames", progress) as bar:
                task = bar.add_task(f"{plan.dataset} -> {plan.out}", total=len(plan.episodes), frames=0)
                for record in plan.episodes:
                    frames += _add_episode(store, plan, record, lerobot)
                    bar.update(task, advance=1, frames=frames)
            lerobot.finalize()
    except BaseException:
        shutil.rmtree(plan.out, ignore_errors=True)  # a half-written dataset would only mislead its reader
        raise
    return frames


def _describe_packet_videos(out: Path, features: list[str]) -> None:
    """Drops from ``meta/info.json`` the encoder settings lerobot records for its own encodes (its AV1 crf and
    preset...): videos muxed from stored packets were not made with them; what the file itself says stays."""
    if not features:
        return
    path = out / "meta" / "info.json"
    info = json.loads(path.read_text())
    for feature in features:
        video = info["features"][feature].get("info", {})
        info["features"][feature]["info"] = {k: v for k, v in video.items() if k in STREAM_INFO}
    path.write_text(json.dumps(info, indent=4))


def _provenance(store: EpisodeStore, plan: _Plan, fps_from: str) -> dict[str, Any]:
    """The contents of ``META_FILE``: where the export came from and what each LeRobot episode was in the store."""
    return {
        "format": META_FORMAT,
        "store": str(store.root),
        "dataset": plan.dataset,
        "repo_id": plan.repo_id,
        "fps": plan.fps,
        "fps_from": fps_from,
        "features": dict(plan.names),
        "resource_feature": RESOURCE_FEATURE,
        "schema": {c: [plan.schema[c].dtype, list(plan.schema[c].shape)] for c in plan.names},  # scalars: (1,)
        "resource_ids": sorted({e.resource_id for e in plan.episodes}),
        "episodes": [
            {
                "episode_index": i,
                "episode_id": e.episode_id,
                "resource_id": e.resource_id,
                "source": e.source,
                "task": e.task,
                "steps": e.num_steps,
                "intervention_steps": e.intervention_steps,
                "success": e.success,
                "label": e.label,  # a person's verdict ("" for none) and who gave it
                "labelled_by": e.labelled_by,
            }
            for i, e in enumerate(plan.episodes)
        ],
    }


def export_lerobot(
    store: EpisodeStore,
    dataset: str,
    out: str | Path,
    repo_id: str | None = None,
    fps: int | None = None,
    selection: Selection = Selection(),
    video: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Writes the selected episodes of ``dataset`` to ``out`` (which must not exist) as a LeRobotDataset v3."""
    out = Path(out)
    repo_id = repo_id or f"fleetloop/{dataset}"
    _check_arguments(out, repo_id, fps)
    store.refresh()
    episodes = select_episodes(store, dataset, selection)
    schema = store.schema(dataset)
    packets = _packet_columns(schema, video)
    if video:
        _check_video_sizes(schema, packets)
    rows = _rows_by_episode(store, dataset, episodes)
    fps_from = "flag" if fps is not None else "t_mono_ns"
    fps = int(fps) if fps is not None else infer_fps(store, dataset, rows)
    names = {c: feature_of(c, s.dtype, s.shape) for c, s in schema.items() if c not in ("seq", "episode_index")}
    plan = _Plan(out, repo_id, dataset, fps, video, episodes, rows, schema, names, packets)
    frames = _write_frames(store, plan, progress)
    _describe_packet_videos(out, [names[c] for c in packets])
    meta = _provenance(store, plan, fps_from)
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    kept = {c: schema[c].codec for c in sorted(packets)}
    return ExportReport(out, repo_id, dataset, fps, fps_from, len(episodes), frames, meta["features"], kept)
