"""(q) fleet-learning: does a bigger fleet learn faster? The real loop (`fleetloop demo`: the cloud with its learner
and 1, 2 or 4 simulated Pandas with scripted operators, each a process, over the tunnel into the store), several
seeds each; the time from the fleet's first step until the autonomous success over the last 20 episodes reached 0.8
(``fleetloop.demo.Learning``), as median and spread, and the scaling efficiency T1 / (N * TN) against the ideal 1.

Every run is a fresh `fleetloop demo --seed S --robots N`: the seed places the cubes and drives the operators and
the learner's batches. A run that does not reach the target within its minutes counts at its full length (censored)
and is reported as not reached.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import HIGHER, LOWER, Result


def run_demo(
    workdir: Path,
    robots: int,
    seed: int,
    minutes: float,
    schedule: str = "async",
    task: str = "panda_pick_cube",
    target: float = 0.8,
) -> dict:
    """One `fleetloop demo` run; its learning.json (``fleetloop.demo.Learning``) with the run's wall time added. A
    run this bench already made in ``workdir`` (another figure's, with the same settings) is read back."""
    name = f"fleet-learning-{schedule}-r{robots}-s{seed}"
    if (task, target) != ("panda_pick_cube", 0.8):
        name += f"-{task}-t{target:g}"
    run_dir = workdir / name
    learning_file = run_dir / "learning.json"
    if learning_file.exists():
        return json.loads(learning_file.read_text())
    command = [sys.executable, "-m", "fleetloop.cli", "demo", "--robots", str(robots), "--seed", str(seed)]
    command += ["--minutes", str(minutes), "--run-dir", str(run_dir), "--schedule", schedule, "--task", task]
    command += ["--target", str(target)]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    started = time.monotonic()
    with open(workdir / f"{name}.out", "w") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=minutes * 60 + 240, check=False)
    if not learning_file.exists():
        raise RuntimeError(f"fleetloop demo --robots {robots} --seed {seed} wrote no learning.json; see {out.name}")
    learning = json.loads(learning_file.read_text())
    learning["wall_s"] = time.monotonic() - started
    learning_file.write_text(json.dumps(learning))
    return learning


def seconds_to_target(
    workdir: Path, robots: int, seed: int, minutes: float, say: Callable[[str], None], **settings: Any
) -> tuple[dict, float]:
    """One run (``run_demo`` with ``settings``) and its seconds to the target, counted at the run's full length
    (censored) when it did not reach it; says which."""
    learning = run_demo(workdir, robots, seed, minutes, **settings)
    reached = learning["reached_at_s"]
    say(
        f"  reached {learning['target']} after {learning['reached_at_episode']} episodes, {reached} s"
        if reached is not None
        else f"  not reached in {minutes:g} min ({learning['episodes']} episodes)"
    )
    return learning, reached if reached is not None else minutes * 60


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


def measure(
    workdir: Path,
    robot_counts: Sequence[int] = (1, 2, 4),
    seeds: Sequence[int] = (1, 2, 3, 4, 5),
    minutes: float = 4.0,
    say: Callable[[str], None] = print,
) -> list[Result]:
    runs: dict[int, list[dict]] = {}
    times: dict[int, list[float]] = {}
    for robots in robot_counts:
        for seed in seeds:
            say(f"fleet-learning: {robots} robot(s), seed {seed}")
            learning, seconds = seconds_to_target(workdir, robots, seed, minutes, say)
            runs.setdefault(robots, []).append(learning)
            times.setdefault(robots, []).append(seconds)
    episodes = {n: [r["reached_at_episode"] or r["episodes"] for r in rs] for n, rs in runs.items()}
    missed = {n: sum(1 for r in rs if r["reached_at_s"] is None) for n, rs in runs.items()}
    single = statistics.median(times[robot_counts[0]])
    results = []
    for robots in robot_counts:
        t = statistics.median(times[robots])
        k = len(times[robots])
        detail = f"median of {k} seeds, spread {_spread(times[robots])} s, not reached {missed[robots]}"
        results.append(
            Result(
                f"fleet learning {robots} robot(s): s to rolling-20 success 0.8 ({detail}; vs {robot_counts[0]} robot)",
                t,
                "s",
                single,
                LOWER,
            )
        )
        ep = episodes[robots]
        results.append(
            Result(
                f"fleet learning {robots} robot(s): episodes to the target (median, spread {_spread(ep)}; vs the "
                f"{robot_counts[0]}-robot median)",
                statistics.median(ep),
                "episodes",
                statistics.median(episodes[robot_counts[0]]),
                LOWER,
            )
        )
        if robots != robot_counts[0]:
            efficiency = single / (robots / robot_counts[0] * t) if t else 0.0
            results.append(
                Result(
                    f"fleet learning {robots} robots: scaling efficiency T1 / (N * TN) (vs the ideal 1.0)",
                    efficiency,
                    "",
                    1.0,
                    HIGHER,
                )
            )
    return results
