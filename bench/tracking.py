"""(p) tracking: what the learner's TensorBoard curves cost a round, vs the same rounds with ``--track none``.

Two learners with the demo's settings (1500 steps of 256, a 2x256 MLP; panda-sized state and action) train on two
stores that receive the same episodes, round by round, alternately (so the machine's noise falls on both alike):
one logs its curves to TensorBoard (every round's numbers, every settled version's success read from the store),
the other logs nothing. Figures: the median round with curves against the median round without, and the time the
curves themselves took per round (timed around their calls) against the round without.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from bench.common import LOWER, Result, median


def _episode(rng: np.random.Generator, version: int, n: int = 20) -> dict[str, np.ndarray]:
    state = rng.normal(size=(n, 21)).astype(np.float32)
    last = np.arange(n) == n - 1
    return {
        "obs.state": state,
        "action": state[:, :4].copy(),
        "reward": np.zeros(n, np.float32),
        "done": last,
        "success": last & (rng.random() < 0.7),
        "intervention": np.arange(n) < (n if version == 0 else int(rng.integers(0, n // 2))),
        "policy_version": np.full(n, version, np.int64),
        "t_mono_ns": np.arange(n, dtype=np.int64) * 100_000_000,
    }


def measure(
    workdir: Path, rounds: int = 6, train_steps: int = 1500, say: Callable[[str], None] = print
) -> list[Result]:
    import torch

    from cloud.data.layout import DataLayout
    from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
    from cloud.data.version_registry import PolicyRegistry
    from cloud.learning.config import LearnerConfig
    from cloud.learning.curves import LearningCurves
    from cloud.learning.learner import Learner
    from fleetloop.commands.learner import learning_curves
    from protocol.steps import schema_for

    torch.set_num_threads(1)  # as run_learner does
    schema = {k: ColumnSpec(*v) for k, v in schema_for([("state", "float32", (21,))], ("float32", (4,))).items()}
    spent: list[float] = []

    class Timed(LearningCurves):
        def round(self, policy: str, step: int, values: Mapping[str, float]) -> None:
            started = time.perf_counter()
            super().round(policy, step, values)
            spent.append(time.perf_counter() - started)

        def versions(self, policy: str, store: EpisodeStore, dataset: str, final: bool = False) -> None:
            started = time.perf_counter()
            super().versions(policy, store, dataset, final)
            spent[-1] += time.perf_counter() - started

    learners: dict[str, tuple[Learner, EpisodeStore]] = {}
    for track in ("none", "tensorboard"):
        root = workdir / f"tracking-{track}"
        store = EpisodeStore(root / "store", durable=False)
        store.ensure_dataset("pick", schema)
        config = LearnerConfig(train_steps=train_steps, round_episodes=5, track=track)
        curves = learning_curves(DataLayout(root), config)
        timed = Timed(curves.open_run, curves.runs_dir) if curves is not None else None
        learners[track] = (Learner(store, PolicyRegistry(root / "registry"), config, curves=timed), store)
    times: dict[str, list[float]] = {"none": [], "tensorboard": []}
    for r in range(rounds + 1):
        for track, (learner, store) in learners.items():
            rng = np.random.default_rng(r)  # the same episodes into both stores
            for i in range(5):
                store.write([StepRows("pick", f"r{r}-{i}", "bench", "sim", "pick", 0, _episode(rng, r))])
            started = time.perf_counter()
            published = learner.poll_once()
            if r and published:  # round 0 warms up (imports, the first writer)
                times[track].append(time.perf_counter() - started)
        say(f"tracking: round {r} trained")
    for learner, store in learners.values():
        learner.close()
        store.close()
    with_curves, without = median(times["tensorboard"]), median(times["none"])
    note = f"{LOWER}; {rounds} rounds of {train_steps} steps of 256, medians"
    return [
        Result("tracking: learner round with TensorBoard curves", with_curves, "s", without, note),
        Result("tracking: the curves' own time per round", median(spent[1:]) * 1000, "ms", without * 1000, note),
    ]
