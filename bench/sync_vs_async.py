"""(s) sync-vs-async: does the asynchronous loop beat a synchronous collect-train-push loop? The real loop (`fleetloop
demo`) on the same seeds under both schedules, 2 robots each:

- async (fleetloop's): the robots never stop; the learner trains between versions and publishes every 5 episodes.
- sync (``--schedule sync``): each robot runs 3 episodes with a version, then holds until the learner has trained on
  them and pushed the next (``fleetloop edge --episodes-per-version``, ``fleetloop learner --synchronous``).

Both report the wall-clock time from the fleet's first step until the autonomous success over the last 20 episodes
reached 0.8 (``fleetloop.demo.Learning``); the figure is sync's median over async's. Runs the fleet-learning figure
(q) already made in this bench run are read back, not repeated. A run that does not reach the target counts at its
full length (censored).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import Result
from bench.fleet_learning import run_demo

SCHEDULES = ("async", "sync")


def measure(
    workdir: Path,
    robots: int = 2,
    seeds: Sequence[int] = (1, 2, 3, 4, 5),
    minutes: float = 4.0,
    say: Callable[[str], None] = print,
) -> list[Result]:
    times: dict[str, list[float]] = {s: [] for s in SCHEDULES}
    missed = dict.fromkeys(SCHEDULES, 0)
    for seed in seeds:
        for schedule in SCHEDULES:
            say(f"sync-vs-async: {schedule}, {robots} robots, seed {seed}")
            learning = run_demo(workdir, robots, seed, minutes, schedule)
            reached = learning["reached_at_s"]
            missed[schedule] += reached is None
            times[schedule].append(reached if reached is not None else minutes * 60)
            say(
                f"  reached {learning['target']} after {learning['reached_at_episode']} episodes, {reached} s"
                if reached is not None
                else f"  not reached in {minutes} min ({learning['episodes']} episodes)"
            )
    per_seed = ", ".join(f"{s / a:.2f}" for s, a in zip(times["sync"], times["async"], strict=True))
    median = {s: statistics.median(t) for s, t in times.items()}
    spread = {s: f"{min(t):.0f}-{max(t):.0f} s" for s, t in times.items()}
    return [
        Result(
            f"sync-vs-async, {robots} robots: s to rolling-20 success 0.8, synchronous schedule (median of "
            f"{len(seeds)} seeds, spread {spread['sync']}, not reached {missed['sync']}; vs the asynchronous loop's "
            f"median, spread {spread['async']}, not reached {missed['async']}; per seed sync/async {per_seed})",
            median["sync"],
            "s",
            median["async"],
        )
    ]
