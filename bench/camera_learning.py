"""(t) camera-learning: can the fleet learn from cameras alone? The real loop (`fleetloop demo --task
panda_pick_cube_camera`: cloud, learner, 2 simulated Pandas with scripted operators, each a process, over the tunnel
into the store) where the robots observe their own joints, gripper and hand position and a 32x32 camera looking down
on the table, the only place the cube shows (``hal.sim.top_view``); the learner trains HG-DAgger's CNN on the
H.264-stored frames. The figure is the wall-clock time until the autonomous success over the last 20 episodes reached
0.6, against the same seeds with the cube's position in the observation (``panda_pick_cube``, its MLP), measured in
the same run. A run that does not reach it within ``minutes`` counts at its full length (censored).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import Result
from bench.fleet_learning import seconds_to_target

TARGET = 0.6
TASKS = {"camera": "panda_pick_cube_camera", "state": "panda_pick_cube"}


def measure(
    workdir: Path,
    robots: int = 2,
    seeds: Sequence[int] = (1,),
    minutes: float = 30.0,
    say: Callable[[str], None] = print,
) -> list[Result]:
    times: dict[str, list[float]] = {k: [] for k in TASKS}
    episodes: dict[str, list[int]] = {k: [] for k in TASKS}
    missed = dict.fromkeys(TASKS, 0)
    for seed in seeds:
        for kind, task in TASKS.items():
            say(f"camera-learning: {task}, {robots} robots, seed {seed}, until rolling success {TARGET}")
            learning, seconds = seconds_to_target(workdir, robots, seed, minutes, say, task=task, target=TARGET)
            missed[kind] += learning["reached_at_s"] is None
            times[kind].append(seconds / 60)
            episodes[kind].append(learning["reached_at_episode"] or learning["episodes"])
    median = {k: statistics.median(t) for k, t in times.items()}
    spread = {k: f"{min(t):.1f}-{max(t):.1f} min" for k, t in times.items()}
    return [
        Result(
            f"camera-learning, {robots} robots: minutes to rolling-20 success {TARGET} seeing the cube only in a 32x32 "
            f"camera (median of {len(seeds)} seed(s), spread {spread['camera']}, not reached {missed['camera']} in "
            f"{minutes:g} min, episodes {statistics.median(episodes['camera']):.0f}; vs the cube's position observed, "
            f"spread {spread['state']}, episodes {statistics.median(episodes['state']):.0f})",
            median["camera"],
            "min",
            median["state"],
        )
    ]
