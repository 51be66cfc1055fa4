"""Runs the benchmarks over the real parts and prints each figure as a ratio against its baseline.

    python -m bench.run                  # everything (about 20 minutes on 2 cores); writes bench/results.json
    python -m bench.run --quick          # a reduced run (seconds)
    python -m bench.run --only uplink    # one or more of the figures below, by name

(a) uplink   image steps from 1 and 4 edge processes into the episode store, vs raw gRPC bytes
(a2) spool   an edge's CPU per MB to spool (a)'s camera batches and upload them from it: segment log vs SQLite spool
(b) push     registry.publish -> "applied" on 1 and 4 edges for ~1M and ~50M MLPs, vs raw gRPC + sha256
(c) jitter   30 Hz tick jitter and missed deadlines while versions arrive, vs the same loop without updates
(c2) lerobot-load  the same as the first lerobot policy arrives: lerobot imported then, vs --preload lerobot
(d) ros2     640x480 images at 30 Hz through ROS 2 into the driver: Fast DDS shared memory vs its default transport
(e) delta    a LoRA-adapted model's update as a delta vs a full-weights push: bytes and publish -> applied
(f) foresight a phone's foresight request -> predicted trajectory on loopback (p50, p99) vs a websockets echo
(g) weighting the next version's error where the foresight was wrong, with foresight weights vs even sampling
(h) sac-camera SAC's autonomous success when the goal is only in a 16x16 camera, vs left out of the image
(i) takeover  a key press on a robot's takeover page -> the command applied at its driver, vs a websockets echo
(j) video     sim camera frames as H.264 / AV1 / JPEG: wire bytes, PSNR, encode and decode time, vs raw frames
(k) learner-cost  a learner round's memory and time with stores of 10k-1M steps, vs the 10k store; frames/s decoded
(l) lerobot-uplink  lerobot's actor -> learner SendTransitions moving (a)'s image steps, vs raw gRPC bytes
(m) capacity  the most robots with two 224x224 30 Hz cameras one cloud sustains (ack lag p99 < 2 s), H.264 vs raw
(n) codec-training  a CNN policy trained from H.264-stored 64x64 frames: success and action error vs raw frames
(o) inference  remote inference round trips (our tunnel client, the real openpi client) vs the model alone; 8 clients'
               replies/s with continuous batching vs max_batch 1
(p) tracking  a learner round logging its curves to TensorBoard (the default), vs the same rounds with --track none
(q) fleet-learning  the real loop (`fleetloop demo`) with 1, 2 and 4 robots over 5 seeds: time until the rolling
               autonomous success over 20 episodes reaches 0.8 (median, spread), scaling efficiency T1 / (N * TN)
(r) adapter-push  MB a version of a lerobot ACT trained with --adapters carries to the robot in the real loop, vs
               the full model
(s) sync-vs-async  the same seeds with 2 robots under a synchronous collect-train-push schedule (robots wait for each
               version) vs the asynchronous loop, on the Panda observing the cube (to 0.8) and on the camera-only
               Panda (to 0.6): time until the rolling success reaches the target, sync / async
(t) camera-learning  the real loop with 2 Pandas that see the cube only in a 32x32 camera (the learner's CNN): minutes
               until the rolling success reaches 0.6, vs the same seed observing the cube's position

The machines are shared and noisy: absolute numbers mean little, ratios against a baseline measured
in the same run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.common import HIGHER, Result

RESULTS = Path(__file__).with_name("results.json")
FIGURES = (
    "uplink",
    "spool",
    "push",
    "jitter",
    "lerobot-load",
    "ros2",
    "delta",
    "foresight",
    "weighting",
    "sac-camera",
    "takeover",
    "video",
    "learner-cost",
    "lerobot-uplink",
    "capacity",
    "codec-training",
    "inference",
    "tracking",
    "fleet-learning",
    "adapter-push",
    "sync-vs-async",
    "camera-learning",
)


def run_bench(
    figures: Sequence[str] = FIGURES, quick: bool = False, out: Path | None = RESULTS, console: Console | None = None
) -> list[Result]:
    """Measures the chosen figures, writes them to ``out`` (unless None) and prints the table."""
    from bench import (
        adapter_push,
        camera_learning,
        capacity,
        codec_training,
        delta,
        fleet_learning,
        foresight,
        inference,
        jitter,
        learner_cost,
        lerobot_uplink,
        push,
        ros2_image,
        sac_camera,
        spool,
        sync_vs_async,
        takeover,
        tracking,
        uplink,
        video,
        weighting,
    )
    from bench.common import LoopThread

    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; known: {list(FIGURES)}")
    console = console or Console(width=None if sys.stdout.isatty() else 180)
    started = time.monotonic()

    def say(text: str) -> None:
        console.print(Text.assemble((f"{time.monotonic() - started:6.1f}s ", "dim"), text))

    edge_counts = (1,) if quick else (1, 4)
    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="fleetloop-bench-", ignore_cleanup_errors=True) as tmp,
        LoopThread() as loop,
    ):
        workdir = Path(tmp)
        if "uplink" in figures:
            results += uplink.measure(
                loop, workdir, edge_counts=edge_counts, steps_per_edge=200 if quick else 2400, say=say
            )
        if "spool" in figures:
            results += spool.measure(workdir, steps=200 if quick else 2400, say=say)
        if "push" in figures:
            sizes = {"1M": push.SIZES["1M"]} if quick else push.SIZES
            results += push.measure(loop, workdir, edge_counts=edge_counts, sizes=sizes, repeats=2, say=say)
        if "jitter" in figures:
            results += jitter.measure(loop, workdir, duration_s=3.0 if quick else 10.0, say=say)
        if "lerobot-load" in figures:
            results += jitter.measure_lerobot_load(loop, workdir, duration_s=8.0 if quick else 12.0, say=say)
        if "ros2" in figures:
            results += ros2_image.measure(seconds=2.0 if quick else 5.0, say=say)
        if "delta" in figures:
            results += delta.measure(loop, workdir, hidden=[1024, 1024] if quick else [4096, 4096], say=say)
        if "foresight" in figures:
            results += foresight.measure(loop, workdir, requests=20 if quick else 100, say=say)
        if "weighting" in figures:
            results += weighting.measure(workdir, seeds=1 if quick else 3, train_steps=300, say=say)
        if "sac-camera" in figures:
            results += sac_camera.measure(workdir, rounds=3 if quick else 8, train_steps=100 if quick else 500, say=say)
        if "takeover" in figures:
            results += takeover.measure(loop, workdir, presses=40 if quick else 200, say=say)
        if "video" in figures:
            results += video.measure(panda_steps=40 if quick else 120, pusht_steps=60 if quick else 200, say=say)
        if "learner-cost" in figures:
            results += learner_cost.measure(workdir, quick=quick, say=say)
        if "lerobot-uplink" in figures:
            results += lerobot_uplink.measure(loop, workdir, steps=200 if quick else 2400, say=say)
        if "capacity" in figures:
            counts = (1, 4) if quick else (2, 4, 8, 16, 32, 64, 128, 256, 512)
            results += capacity.measure(
                loop, workdir, counts=counts, seconds=2.0 if quick else 5.0, clip_frames=30 if quick else 60, say=say
            )
        if "codec-training" in figures:
            episodes, updates = (6, 40) if quick else (40, 600)
            results += codec_training.measure(workdir, episodes=episodes, train_steps=updates, say=say)
        if "inference" in figures:
            requests, seconds, rounds = (60, 1.0, 1) if quick else (400, 3.0, 3)
            results += inference.measure(loop, workdir, requests=requests, seconds=seconds, rounds=rounds, say=say)
        if "tracking" in figures:
            results += tracking.measure(workdir, rounds=2 if quick else 6, train_steps=200 if quick else 1500, say=say)
        if "fleet-learning" in figures:
            counts, seeds = ((1, 2), (1,)) if quick else ((1, 2, 4), (1, 2, 3, 4, 5))
            results += fleet_learning.measure(workdir, robot_counts=counts, seeds=seeds, say=say)
        if "adapter-push" in figures:
            results += adapter_push.measure(workdir, say=say)
        if "camera-learning" in figures:
            seeds = (1,) if quick else (1, 2, 3)
            results += camera_learning.measure(workdir, seeds=seeds, minutes=3.0 if quick else 30.0, say=say)
        if "sync-vs-async" in figures:  # reads back the async runs (q) and (t) made above
            results += sync_vs_async.measure(workdir, seeds=(1,) if quick else (1, 2, 3), say=say)
    say(f"done in {time.monotonic() - started:.0f} s")
    if out is not None:
        out.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
        say(f"wrote {out}")
    console.print(table(results))
    return results


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(results: list[Result]) -> Table:
    out = Table(title="fleetloop bench: ratio = value / baseline, both measured in this run", title_justify="left")
    out.add_column("figure")
    out.add_column("value", justify="right")
    out.add_column("baseline", justify="right")
    out.add_column("unit")
    out.add_column("ratio", justify="right", style="bold")
    out.add_column("better")
    for r in results:
        better = "higher" if r.note.startswith(HIGHER) else "lower"
        out.add_row(r.name, _fmt(r.value), _fmt(r.baseline), r.unit, _fmt(r.ratio), better)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a reduced run: 1 edge, few steps, 1M policy, 3 s loop, 20 foresights"
    )
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # clean up children and temp dirs on a plain kill too
    figures = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown or not figures:
        parser.error(f"--only: unknown figure(s) {unknown}; known: {','.join(FIGURES)}")
    try:
        run_bench(figures, quick=args.quick, out=args.out)
    except KeyboardInterrupt:
        print("interrupted; child processes stopped and temporary files removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
