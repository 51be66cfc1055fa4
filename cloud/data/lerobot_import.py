"""Import: a LeRobotDataset's episodes into the store as offline demonstrations.

``import_lerobot`` reads a local LeRobotDataset (v3) with lerobot's own ``LeRobotDataset`` and writes each of its
episodes into one store dataset, as if an operator had driven every step: source ``"import"``,
``intervention=True`` on every step (so the HG-DAgger learner trains on them), ``policy_version`` 0, and resource
id ``"import:<repo_id>"`` unless one is given. Features map back the way ``cloud.data.lerobot_export`` maps them out:

- ``observation.images.<n>`` (image or video) -> ``obs.<n>``, uint8 height x width x 3; an H.264 or AV1 video
  whose sides are whole 16-pixel blocks and whose episodes each start at a keyframe stays encoded: its packets are
  demuxed into the store's packet column, never decoded (``cloud.data.lerobot_video``). A video with an episode
  starting between keyframes is decoded whole, as other videos and images are (the log says so): cutting the
  lead-in out or re-encoding it would change frames or their count;
- ``observation.<n>`` -> ``obs.<n>`` (``observation.state`` -> ``obs.state``);
- ``action`` -> ``action``;
- ``next.reward``/``next.done``/``next.success``/``t_mono_ns`` -> ``reward``/``done``/``success``/``t_mono_ns``
  where present. Otherwise reward is 0, success False and t_mono_ns frame_index / fps in ns. ``done`` is
  always True on an episode's last step, so the learner counts the demonstration as finished.

Other features (``intervention``, ``policy_version``, ``resource_id`` of a fleetloop export included) are not
taken over: an imported step is a demonstration whatever it was before.

Importing is idempotent. Episode ``i`` of repo id ``R`` gets the episode id ``import:R:i`` (a hash of ``R``
when that would be longer than 128 characters), the store keeps ``(episode_id, seq)`` unique, episodes the store
already holds whole are skipped without being read, and a cut-short import resumes where it stopped. The same
dataset under another repo id is another set of episodes.

The store has one writer: import while the cloud (its gateway) is stopped, or into another store root.
Errors are ValueErrors that start with the ``fleetloop import`` flag they concern (``--from``, ``--dataset``...).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cloud.data.lerobot_export import IMAGE_PREFIX, META_FILE, STEP_FEATURES
from cloud.data.lerobot_progress import datasets_bars_off, episode_bar
from cloud.data.lerobot_video import episode_packets, packet_features
from cloud.data.store import NAME, ColumnSpec, EpisodeStore, StepRows
from protocol.steps import PROVENANCE_COLUMNS

SOURCE = "import"
MAX_EPISODE_ID = 128
LEROBOT_INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
TAKEN_OVER = ("reward", "done", "success", "t_mono_ns")  # not intervention/policy_version: set per demonstration
WRITE_ROWS = 2048  # steps per group commit to the store


@dataclass
class ImportReport:
    dataset: str
    repo_id: str
    resource_id: str
    episodes: int  # in the LeRobotDataset
    imported: int  # episodes written (whole or their missing tail)
    skipped: int  # episodes the store already held whole
    steps: int  # rows written
    columns: dict[str, str] = field(default_factory=dict)  # lerobot feature -> store column
    ignored: list[str] = field(default_factory=list)  # lerobot features not taken over
    kept_encoded: dict[str, str] = field(default_factory=dict)  # lerobot feature -> codec stored as its packets


def episode_id_for(repo_id: str, episode_index: int) -> str:
    episode_id = f"{SOURCE}:{repo_id}:{episode_index}"
    if len(episode_id) <= MAX_EPISODE_ID:
        return episode_id
    return f"{SOURCE}:{hashlib.sha256(repo_id.encode()).hexdigest()[:32]}:{episode_index}"


def _image_shape(feature: dict) -> tuple[int, int, int]:
    """Height, width, channels of an image/video feature, whichever layout its names give."""
    shape = tuple(int(d) for d in feature["shape"])
    names = list(feature.get("names") or [])
    if len(shape) == 3 and names[:1] in (["channels"], ["channel"]):
        return shape[1], shape[2], shape[0]
    return shape  # lerobot's default: (height, width, channels)


def store_columns(features: dict[str, dict]) -> tuple[dict[str, str], dict[str, ColumnSpec], list[str]]:
    """(lerobot feature -> store column, the store schema, ignored features) for a LeRobotDataset's features."""
    columns: dict[str, str] = {}
    schema: dict[str, ColumnSpec] = {}
    ignored: list[str] = []
    provenance = {STEP_FEATURES[c]: c for c in TAKEN_OVER}
    for key, feature in features.items():
        dtype = feature["dtype"]
        if key in LEROBOT_INDEX_FEATURES:
            continue
        if dtype in ("image", "video"):
            if not key.startswith("observation."):
                ignored.append(key)
                continue
            name = key.removeprefix(IMAGE_PREFIX) if key.startswith(IMAGE_PREFIX) else key.removeprefix("observation.")
            height, width, channels = _image_shape(feature)
            if channels != 3:
                raise ValueError(f"--from: {key} has {channels} channels; only RGB images are imported")
            spec = ColumnSpec("|u1", (height, width, 3))
        elif key == "action" or key.startswith("observation."):
            if dtype in ("string", "language") or not re.fullmatch(r"(bool|u?int\d+|float\d+)", dtype):
                raise ValueError(f"--from: {key} is {dtype}; observations and the action must be numeric")
            name = key.removeprefix("observation.")
            spec = ColumnSpec(np.dtype(dtype).str, tuple(int(d) for d in feature["shape"]))
        elif key in provenance:
            columns[key] = provenance[key]
            continue
        else:
            ignored.append(key)
            continue
        column = "action" if key == "action" else f"obs.{name}"
        if column != "action" and not NAME.fullmatch(name):
            raise ValueError(f"--from: {key} gives the store column {column!r}, which is not a valid name")
        if column in schema:
            other = next(k for k, c in columns.items() if c == column)
            raise ValueError(f"--from: {key} and {other} would both become the store column {column}")
        columns[key] = column
        schema[column] = spec
    if "action" not in schema:
        raise ValueError("--from: the dataset has no 'action' feature to learn from")
    for column, (dtype, shape) in PROVENANCE_COLUMNS.items():
        schema[column] = ColumnSpec(dtype, shape)
    return columns, schema, ignored


def _dataset_name(requested: str | None, meta: dict | None, robot_type: str | None, repo_id: str) -> str:
    if requested:
        if not NAME.fullmatch(requested):
            raise ValueError(f"--dataset: {requested!r} must be 1-128 letters, digits, '_', '.', '-'")
        return requested
    for candidate in ((meta or {}).get("dataset"), robot_type, repo_id.rsplit("/", 1)[-1]):
        if candidate and NAME.fullmatch(candidate):
            return candidate
    raise ValueError(f"--dataset: cannot derive a store dataset name from {repo_id!r}; pass --dataset")


def _as_array(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _to_uint8_hwc(value: Any, height: int, width: int) -> np.ndarray:
    """lerobot returns images as float CxHxW in [0, 1]; back to the uint8 HxWxC the store holds."""
    array = _as_array(value)
    if array.shape == (3, height, width):
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return array


def _names(source: Path, repo_id: str | None, resource_id: str | None) -> tuple[dict | None, str, str]:
    """(fleetloop's export metadata if any, the repo id, the resource id) of an import from ``source``."""
    if not (source / "meta" / "info.json").is_file():
        raise ValueError(f"--from: {source} is not a local LeRobotDataset (no meta/info.json)")
    meta_path = source / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    repo_id = repo_id or (meta or {}).get("repo_id") or f"local/{source.resolve().name}"
    if not repo_id.isprintable() or len(repo_id) > 256:
        raise ValueError(f"--repo-id: {repo_id!r} must be printable and at most 256 characters")
    resource_id = resource_id or f"{SOURCE}:{repo_id}"
    if not resource_id.isprintable() or not 1 <= len(resource_id) <= 128:
        raise ValueError(f"--resource: {resource_id!r} must be printable and 1-128 characters")
    return meta, repo_id, resource_id


def _check_not_elsewhere(store: EpisodeStore, repo_id: str, episodes: int, name: str, resource_id: str) -> None:
    """Refuses an import whose episodes the store already holds under another dataset or resource."""
    for episode_index in range(episodes):
        stored = store.episode(episode_id_for(repo_id, episode_index))
        if stored is not None and (stored.dataset, stored.resource_id) != (name, resource_id):
            raise ValueError(
                f"--dataset: episode {episode_index} of {repo_id} is already in dataset {stored.dataset} "
                f"from {stored.resource_id}; import it there (--dataset {stored.dataset} --resource "
                f"{stored.resource_id}) or under another --repo-id"
            )


@dataclass(frozen=True)
class _Source:
    """How the store takes the dataset: its schema, and the video features kept as packets (feature -> codec)."""

    schema: dict[str, ColumnSpec]
    packets: dict[str, str]


def _write_episodes(
    store: EpisodeStore, lerobot: Any, source: _Source, report: ImportReport, label: str, shown: bool
) -> None:
    """Writes each episode the store does not hold whole, in group commits of about ``WRITE_ROWS`` steps."""
    pending: list[StepRows] = []
    with episode_bar("import", "steps", shown) as bar:
        task = bar.add_task(label, total=report.episodes, steps=0)
        for episode_index in range(report.episodes):
            episode = lerobot.meta.episodes[episode_index]
            start, stop = int(episode["dataset_from_index"]), int(episode["dataset_to_index"])
            episode_id = episode_id_for(report.repo_id, episode_index)
            stored = store.episode(episode_id)
            if stop <= start or (stored is not None and stored.num_steps >= stop - start):
                report.skipped += 1
            else:
                rows = _episode_rows(lerobot, source, report.columns, episode_index, (start, stop))
                report.steps += len(rows["action"]) - (stored.num_steps if stored else 0)
                report.imported += 1
                task_text = rows.pop("task")
                pending.append(StepRows(report.dataset, episode_id, report.resource_id, SOURCE, task_text, 0, rows))
                if sum(len(p.columns["action"]) for p in pending) >= WRITE_ROWS:
                    store.write(pending)
                    pending = []
            bar.update(task, advance=1, steps=report.steps)
        if pending:
            store.write(pending)


def import_lerobot(
    store: EpisodeStore,
    source: str | Path,
    repo_id: str | None = None,
    dataset: str | None = None,
    resource_id: str | None = None,
    progress: bool = True,
) -> ImportReport:
    """Writes every episode of the LeRobotDataset at ``source`` into ``store`` (see the module docstring)."""
    source = Path(source)
    meta, repo_id, resource_id = _names(source, repo_id, resource_id)

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    with datasets_bars_off():
        try:
            lerobot = LeRobotDataset(repo_id, root=source)
        except Exception as err:  # lerobot raises whatever its loaders raise (version, missing files, schema)
            raise ValueError(f"--from: lerobot cannot read {source} as a LeRobotDataset: {err}") from err
        columns, schema, ignored = store_columns(lerobot.features)
        for column, (dtype, shape) in (meta or {}).get("schema", {}).items():
            if column in schema and not shape and schema[column] == ColumnSpec(dtype, (1,)):
                schema[column] = ColumnSpec(dtype, ())  # a fleetloop export of a scalar column: scalar again
        name = _dataset_name(dataset, meta, lerobot.meta.robot_type, repo_id)
        _check_not_elsewhere(store, repo_id, lerobot.meta.total_episodes, name, resource_id)  # before it is created
        packets = packet_features(lerobot, columns, schema)
        for key, codec in packets.items():
            schema[columns[key]] = replace(schema[columns[key]], codec=codec)
        try:
            store.ensure_dataset(name, schema)
        except ValueError as err:
            raise ValueError(f"--dataset: {name} cannot hold {source}: {err}") from err
        held = store.schema(name)  # a dataset that existed keeps its codecs: packets go only where they match
        packets = {key: codec for key, codec in packets.items() if held[columns[key]].codec == codec}
        report = ImportReport(
            name, repo_id, resource_id, lerobot.meta.total_episodes, 0, 0, 0, columns, ignored, dict(packets)
        )
        _write_episodes(store, lerobot, _Source(schema, packets), report, f"{source} -> {name}", progress)
    return report


def _item(lerobot: Any, index: int, decode: bool) -> dict:
    """Frame ``index`` of the dataset; without ``decode``, its parquet row alone (lerobot decodes no video)."""
    if decode:
        return lerobot[index]  # lerobot's own reader: decodes images and videos
    item = dict(lerobot.hf_dataset[index])
    item["task"] = lerobot.meta.tasks.iloc[int(item["task_index"])].name  # as lerobot's reader names it
    return item


def _episode_rows(lerobot: Any, source: _Source, columns: dict[str, str], episode: int, span: tuple[int, int]) -> dict:
    """One episode's frames [start, stop) as store columns (and its task under "task")."""
    start, stop = span
    n = stop - start
    kept = {columns[key] for key in source.packets}
    schema = source.schema
    out: dict[str, Any] = {c: np.zeros((n, *spec.shape), spec.dtype) for c, spec in schema.items() if c not in kept}
    for key in source.packets:
        out[columns[key]] = episode_packets(lerobot, episode, key, schema[columns[key]].shape, n)
    decode = any(lerobot.meta.features[key]["dtype"] == "video" for key in columns if key not in source.packets)
    columns = {key: column for key, column in columns.items() if key not in source.packets}
    out["intervention"][:] = True  # a demonstration: every action is a person's
    out["policy_version"][:] = 0
    have = set(columns.values())
    task = ""
    for i in range(n):
        item = _item(lerobot, start + i, decode)
        if i == 0:
            task = str(item.get("task", ""))
        for key, column in columns.items():
            spec = schema[column]
            if spec.dtype == "|u1" and len(spec.shape) == 3:
                out[column][i] = _to_uint8_hwc(item[key], spec.shape[0], spec.shape[1])
            else:
                out[column][i] = _as_array(item[key]).reshape(spec.shape)
        if "t_mono_ns" not in have:
            out["t_mono_ns"][i] = int(item["frame_index"]) * 1_000_000_000 // lerobot.fps  # float32 timestamps drift
    out["done"][-1] = True  # the demonstration ended here, whatever next.done said
    out["task"] = task
    return out
