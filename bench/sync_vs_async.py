"""(s) sync-vs-async: does the asynchronous loop beat a synchronous collect-train-push loop? The real loop (`fleetloop
demo`) on the same seeds under both schedules, 2 robots each:

- async (fleetloop's): the robots never stop; the learner trains between versions and publishes every 5 episodes.
- sync (``--schedule sync``): each robot runs 3 episodes with a version, then holds until the learner has trained on
  them and pushed the next (``fleetloop edge --episodes-per-version``, ``fleetloop learner --synchronous``).

Two tasks: the Panda observing the cube's position (an MLP: a version trains in a second or two) until the rolling
success over 20 episodes reaches 0.8, and the Panda seeing it only in its camera (a CNN: a version trains for tens of
seconds on 2 cores) until 0.6. Each figure is the wall-clock time from the fleet's first step to the target
(``fleetloop.demo.Learning``), sync's median over async's. Runs figures (q) and (t) already made in this bench run
are read back, not repeated. A run that does not reach the target counts at its full length (censored).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import Result
from bench.fleet_learning import seconds_to_target

SCHEDULES = ("async", "sync")
# (task, target, minutes before a run counts as not reached)
CASES = (("panda_pick_cube", 0.8, 4.0), ("panda_pick_cube_camera", 0.6, 10.0))


def measure(
    workdir: Path,
    robots: int = 2,
    seeds: Sequence[int] = (1, 2, 3, 4, 5),
    cases: Sequence[tuple[str, float, float]] = CASES,
    say: Callable[[str], None] = print,
) -> list[Result]:
    results = []
    for task, target, minutes in cases:
        times: dict[str, list[float]] = {s: [] for s in SCHEDULES}
        missed = dict.fromkeys(SCHEDULES, 0)
        for seed in seeds:
            for schedule in SCHEDULES:
                say(f"sync-vs-async: {task} until {target}, {schedule}, {robots} robots, seed {seed}")
                learning, seconds = seconds_to_target(
                    workdir, robots, seed, minutes, say, schedule=schedule, task=task, target=target
                )
                missed[schedule] += learning["reached_at_s"] is None
                times[schedule].append(seconds)
        per_seed = ", ".join(f"{s / a:.2f}" for s, a in zip(times["sync"], times["async"], strict=True))
        median = {s: statistics.median(t) for s, t in times.items()}
        spread = {s: f"{min(t):.0f}-{max(t):.0f} s" for s, t in times.items()}
        results.append(
            Result(
                f"sync-vs-async, {task}, {robots} robots: s to rolling-20 success {target}, synchronous schedule "
                f"(median of {len(seeds)} seeds, spread {spread['sync']}, not reached {missed['sync']}; vs the "
                f"asynchronous loop's median, spread {spread['async']}, not reached {missed['async']}; per seed "
                f"sync/async {per_seed})",
                median["sync"],
                "s",
                median["async"],
            )
        )
    return results
