"""(k) learner-cost: a learner round's memory and time as the store grows, and frames/s through the frame cache.

Stores of 10k, 100k (and in the full run 1M) state steps, and of 10k and 100k camera steps (one 96x96 H.264 camera,
``protocol.video.CameraEncoder``; one synthetic 100-frame clip is encoded once and its packets reused by every
episode, so writing is fast), written in big non-durable group commits with 4096-row chunks (setup: about 1 s per
100k state steps here). A round is what a learner round does with its data: look at the store, build the sampler
(``cloud.learning.sampler``), draw ``BATCHES`` batches and gather their columns (no network is trained: that cost
does not depend on the store). Measured after a first round, with one new 100-step episode committed before each
measured round, as a learner meets the store.

- ``incremental``: the learner now (``cloud.learning.step_index.StepIndex``: only the new rows read; cameras fetched
  per batch through ``cloud.learning.streaming.FrameCache``, 64 MB).
- ``full read``: ``load_steps`` as the learner did before: every committed row of every column, frames decoded.

Rows: each path's peak memory during a round (tracemalloc: numpy's allocations) and time per round, as ratios
against the same path's 10k store (flat is ~1; proportional is 10x at 100k, 100x at 1M); the incremental index's
held bytes per step (it keeps the small columns of every row: proportional by design, about 140 B per step); and
frames/s of random batches of camera rows decoded through the cache vs raw reads of the same rows stored as uint8.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import HIGHER, LOWER, Result

EPISODE_STEPS = 100
BATCHES, BATCH_SIZE = 8, 64
CACHE_BYTES = 64 << 20
SIDE = 96


def _schema(camera: str) -> dict:
    from cloud.data.store import ColumnSpec
    from protocol.steps import schema_for

    schema = schema_for([("state", "<f4", (21,))], ("<f4", (4,)))
    out = {name: ColumnSpec(dtype, shape) for name, (dtype, shape) in schema.items()}
    if camera:
        out["obs.cam"] = ColumnSpec("|u1", (SIDE, SIDE, 3), "" if camera == "raw" else camera)
    return out


def _clip() -> tuple[np.ndarray, object]:
    """A ball moving over a checkerboard, 100 frames, and its H.264 packets (a PacketColumn)."""
    from protocol.video import CameraEncoder, PacketColumn

    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    frames = np.empty((EPISODE_STEPS, SIDE, SIDE, 3), np.uint8)
    for t in range(EPISODE_STEPS):
        floor = 80 + 60 * (((xx // 12) + (yy // 12)) % 2)
        ball = (xx - 10 - 0.7 * t) ** 2 + (yy - 48 - 20 * np.sin(t / 9)) ** 2 < 100
        frames[t] = np.stack([np.where(ball, 220, floor), np.where(ball, 40, floor), floor], -1)
    encoder = CameraEncoder("h264", SIDE, SIDE, 30, gop=30, camera="obs.cam")
    packets = [p for frame in frames for p in encoder.encode(frame)]
    return frames, PacketColumn("h264", tuple(p.data for p in packets), np.array([p.keyframe for p in packets]))


def _episode(index: int, camera: str, clip: tuple[np.ndarray, object] | None):
    from cloud.data.store import StepRows

    rng = np.random.default_rng(index)
    n = EPISODE_STEPS
    columns = {
        "obs.state": rng.standard_normal((n, 21)).astype(np.float32),
        "action": rng.standard_normal((n, 4)).astype(np.float32),
        "reward": np.zeros(n, np.float32),
        "done": np.arange(n) == n - 1,
        "success": np.zeros(n, bool),
        "intervention": rng.random(n) < 0.3,
        "policy_version": np.full(n, index % 5, np.int64),
        "t_mono_ns": np.arange(n, dtype=np.int64),
    }
    if camera and clip is not None:
        columns["obs.cam"] = clip[0] if camera == "raw" else clip[1]
    return StepRows("arm", f"ep{index}", "robot-1", "sim", "pick", 0, columns)


def build_store(root: Path, steps: int, camera: str = "", clip=None):
    """A store of ``steps`` steps in episodes of 100 (``camera``: "" none, "raw" uint8 frames, "h264" packets)."""
    from cloud.data.store import EpisodeStore

    store = EpisodeStore(root, chunk_rows=4096, durable=False)
    store.ensure_dataset("arm", _schema(camera))
    episodes = steps // EPISODE_STEPS
    per_write = 1000 if not camera else 100
    for first in range(0, episodes, per_write):
        store.write([_episode(i, camera, clip) for i in range(first, min(first + per_write, episodes))])
    return store


def _gather(columns: dict[str, np.ndarray], rows: np.ndarray) -> int:
    return sum(values[rows].nbytes for values in columns.values())


def incremental_round(store, index, frames, names: list[str]) -> None:
    """A round the learner runs now: new rows only; cameras fetched per batch through the cache."""
    import torch

    from cloud.learning.sampler import KINDS, Sampler
    from cloud.learning.staleness import StalenessBudget
    from cloud.learning.streaming import Streamed

    table = index.table("arm", names)
    sampler = Sampler.build(table, None, KINDS, StalenessBudget(), current_version=5)
    generator = torch.Generator().manual_seed(0)
    draws = [sampler.draw(BATCH_SIZE, generator) for _ in range(BATCHES)]
    streamed = Streamed(frames, "arm", {name: (name, sampler.rows) for name in table.streamed})
    fetched = streamed.batches(draws) if table.streamed else iter([{}] * BATCHES)
    held = {name: table.columns[name] for name in names if name in table.columns}
    for draw, large in zip(draws, fetched, strict=True):
        _gather(held, sampler.rows[draw.numpy()])
        del large


def full_round(store, names: list[str]) -> None:
    """A round as the learner ran it before: every committed row of every column read (and decoded) again."""
    import torch

    from cloud.learning.sampler import KINDS, Sampler, load_steps
    from cloud.learning.staleness import StalenessBudget

    table = load_steps(store, "arm", names)
    sampler = Sampler.build(table, None, KINDS, StalenessBudget(), current_version=5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(BATCHES):
        _gather({name: table.columns[name] for name in names}, sampler.rows[sampler.draw(BATCH_SIZE, generator)])


def _measure(round_: Callable[[], None], grow: Callable[[], None]) -> tuple[float, float]:
    """(peak MB, seconds) of one round after a first one, with a new episode committed before it."""
    round_()
    grow()
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    round_()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return peak, seconds


def _sizes(quick: bool) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(label, camera, store sizes, the largest store the full-read path runs on)."""
    state = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    return [("state", "", state, 1_000_000), ("camera", "h264", (10_000, 100_000), 10_000 if quick else 100_000)]


def _store_rows(workdir: Path, label: str, camera: str, sizes, full_max: int, clip, say) -> list[Result]:
    import shutil

    from cloud.learning.step_index import StepIndex
    from cloud.learning.streaming import FrameStream

    names = ["obs.state", "action", *(["obs.cam"] if camera else [])]
    base: dict[str, tuple[float, float]] = {}
    results = []
    for steps in sizes:
        started = time.perf_counter()
        root = workdir / f"learner-cost-{label}-{steps}"
        store = build_store(root, steps, camera, clip)
        say(f"learner-cost: {label} store of {steps:,} steps written in {time.perf_counter() - started:.1f} s")
        added = [steps // EPISODE_STEPS]

        def grow(store=store, added=added) -> None:
            store.write([_episode(added[0], camera, clip)])
            added[0] += 1

        index, frames = StepIndex(store), FrameStream(store, CACHE_BYTES, workers=0)
        paths = {
            "incremental": lambda store=store, index=index, frames=frames: incremental_round(
                store, index, frames, names
            )
        }
        if steps <= full_max:
            paths["full read"] = lambda store=store: full_round(store, names)
        for path, round_ in paths.items():
            peak, seconds = _measure(round_, grow)
            base.setdefault(path, (peak, seconds))
            say(f"learner-cost: {label} {steps:,} steps, {path}: round {seconds:.3f} s, peak {peak:.1f} MB")
            what = f"{label} {steps // 1000}k steps, {path}"
            results.append(Result(f"learner {what}: round time", seconds, "s", base[path][1], f"{LOWER}; vs 10k"))
            results.append(Result(f"learner {what}: round peak memory", peak, "MB", base[path][0], f"{LOWER}; vs 10k"))
        held = index.held_bytes() / max(1, store.committed_rows("arm"))
        base.setdefault("held", (held, 0.0))
        results.append(
            Result(
                f"learner {label} {steps // 1000}k steps: index held",
                held,
                "B/step",
                base["held"][0],
                f"{LOWER}; vs 10k",
            )
        )
        store.close()
        shutil.rmtree(root, ignore_errors=True)
    return results


def _frames_per_second(workdir: Path, clip, say) -> list[Result]:
    """Random batches of camera rows through the frame cache: H.264 decoded vs the same rows stored raw."""
    import shutil

    from cloud.learning.streaming import FrameCache

    rng = np.random.default_rng(0)
    steps = 10_000
    picks = [rng.integers(0, steps, BATCH_SIZE) for _ in range(BATCHES)]
    rate = {}
    for camera in ("h264", "raw"):
        root = workdir / f"learner-cost-fps-{camera}"
        store = build_store(root, steps, camera, clip)
        cache = FrameCache(store, CACHE_BYTES)
        started = time.perf_counter()
        for rows in picks:
            cache.rows("arm", "obs.cam", rows)
        rate[camera] = BATCHES * BATCH_SIZE / (time.perf_counter() - started)
        say(f"learner-cost: {camera} camera rows through the cache: {rate[camera]:,.0f} frames/s")
        store.close()
        shutil.rmtree(root, ignore_errors=True)
    note = f"{HIGHER}; random batches of {BATCH_SIZE} over {steps:,} rows, cold {CACHE_BYTES >> 20} MB cache"
    return [Result("learner camera frames/s: h264 decoded vs raw reads", rate["h264"], "frames/s", rate["raw"], note)]


def measure(workdir: Path, quick: bool = False, say: Callable[[str], None] = print) -> list[Result]:
    clip = _clip()
    results = []
    for label, camera, sizes, full_max in _sizes(quick):
        results += _store_rows(workdir, label, camera, sizes, full_max, clip, say)
    return results + _frames_per_second(workdir, clip, say)
