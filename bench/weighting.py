"""(g) Foresight weighting: does the next version learn more where the current one's foresight was wrong?

A 2-D reach-like task whose demonstrated action (a target position x y z) depends on the state differently in
two regions: A (x < 0) and B (x >= 0). Version 1 is trained by the real learner on demonstrations from A only, so
its predictions are right in A and wrong in B. Then new demonstrations arrive, mostly from A and a few from B
(8 and 2 episodes); each step's foresight error is v1's predicted position against the demonstrated one
(``cloud.serving.foresight.step_error``), stored in the real episode store as the phone channel stores it. Version 2 is
trained twice from the same store, seed and budget: with the foresight weights (steps off by more than 2 cm drawn
up to 5 times as often) and with them off (``foresight_max_weight=1``, the baseline). The figures are v2's mean
action error on held-out states in B (where v1 was wrong) and in A (where it was right), over a few seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import LOWER, Result

STEPS = 20  # steps per episode
A_EPISODES_V1, A_EPISODES_NEW, B_EPISODES_NEW = 10, 8, 2


def target(state: np.ndarray) -> np.ndarray:
    """The demonstrated action (x y z) for states (N, 2): one smooth rule in A, another in B."""
    x, y = state[:, 0], state[:, 1]
    in_b = x >= 0
    ax = np.where(in_b, 0.3 * np.cos(3 * y), 0.3 * np.sin(3 * y))
    ay = np.where(in_b, -0.5 * x + 0.2, 0.5 * x)
    return np.stack([ax, ay, np.zeros_like(x)], axis=1).astype(np.float32)


def states(rng: np.random.Generator, region: str, n: int) -> np.ndarray:
    x = rng.uniform(-1, 0, n) if region == "A" else rng.uniform(0, 1, n)
    return np.stack([x, rng.uniform(-1, 1, n)], axis=1).astype(np.float32)


def _schema() -> dict:
    from cloud.data.store import ColumnSpec
    from cloud.serving.foresight import COLUMNS
    from protocol.steps import schema_for

    schema = schema_for([("state", "<f4", (2,))], ("<f4", (3,)))
    schema.update(COLUMNS)
    return {name: ColumnSpec(dtype, shape) for name, (dtype, shape) in schema.items()}


def _write(store, name: str, state: np.ndarray, errors: np.ndarray, version: int) -> None:
    from cloud.data.store import StepRows

    n = len(state)
    columns = {
        "obs.state": state,
        "action": target(state),
        "reward": np.zeros(n, np.float32),
        "done": np.arange(n) == n - 1,
        "success": np.zeros(n, bool),
        "intervention": np.ones(n, bool),
        "policy_version": np.zeros(n, np.int64),
        "t_mono_ns": np.arange(n, dtype=np.int64),
        "meta.foresight_error": errors.astype(np.float32),
        "meta.foresight_version": np.full(n, version, np.int64),
    }
    store.write([StepRows("reach", name, "phone-1", "phone", "reach", 0, columns)])


def _one_seed(workdir: Path, seed: int, train_steps: int) -> dict[str, float]:
    from cloud.data.store import EpisodeStore
    from cloud.data.version_registry import PolicyRegistry
    from cloud.learning.config import LearnerConfig
    from cloud.learning.learner import Learner
    from cloud.learning.sampler import SamplerConfig
    from cloud.serving.foresight import step_error
    from policies.weights import policy_from_bytes

    rng = np.random.default_rng(seed)
    root = workdir / f"weighting-{seed}"
    store = EpisodeStore(root / "store")
    try:
        store.ensure_dataset("reach", _schema())
        base = dict(first_round_episodes=1, train_steps=train_steps, batch_size=64, hidden=(64, 64), seed=seed)
        for index in range(A_EPISODES_V1):  # v1's demonstrations: region A only, nothing to score them with
            _write(store, f"v1-a{index}", states(rng, "A", STEPS), np.full(STEPS, np.nan), 0)
        v1_registry = PolicyRegistry(root / "registry-v1")
        Learner(store, v1_registry, LearnerConfig(**base)).poll_once()
        v1 = policy_from_bytes(v1_registry.read("reach", 1))
        for region, count in (("A", A_EPISODES_NEW), ("B", B_EPISODES_NEW)):
            for index in range(count):
                state = states(rng, region, STEPS)
                predicted = v1.act_batch([{"state": s} for s in state])
                errors = np.array([step_error(predicted[i], target(state), i) for i in range(STEPS)])
                _write(store, f"new-{region}{index}", state, errors, 1)
        held_out = {region: states(rng, region, 400) for region in ("A", "B")}
        errors = {}
        for name, max_weight in (("weighted", 5.0), ("even", 1.0)):
            config = LearnerConfig(**base, sampler=SamplerConfig(foresight_max_weight=max_weight))
            registry = PolicyRegistry(root / f"registry-{name}")
            Learner(store, registry, config).poll_once()
            v2 = policy_from_bytes(registry.read("reach", 1))
            for region, state in held_out.items():
                predicted = v2.act_batch([{"state": s} for s in state])[:, 0]
                errors[f"{name}.{region}"] = float(np.abs(predicted - target(state)).mean())
        return errors
    finally:
        store.close()


def measure(workdir: Path, seeds: int = 3, train_steps: int = 300, say: Callable[[str], None] = print) -> list[Result]:
    runs = []
    for seed in range(seeds):
        runs.append(_one_seed(workdir, seed, train_steps))
        say(
            f"weighting seed {seed}: v2 error in B (v1 wrong) {runs[-1]['weighted.B']:.4f} weighted vs "
            f"{runs[-1]['even.B']:.4f} even; in A (v1 right) {runs[-1]['weighted.A']:.4f} vs {runs[-1]['even.A']:.4f}"
        )
    mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
    note = f"{LOWER}; mean |action error| of v2 over {seeds} seeds, {train_steps} steps, vs even sampling"
    return [
        Result("(g) v2 action error where v1's foresight was wrong (B)", mean["weighted.B"], "m", mean["even.B"], note),
        Result("(g) v2 action error where v1's foresight was right (A)", mean["weighted.A"], "m", mean["even.A"], note),
        Result(
            "(g) v2 action error over both regions",
            (mean["weighted.A"] + mean["weighted.B"]) / 2,
            "m",
            (mean["even.A"] + mean["even.B"]) / 2,
            note,
        ),
    ]
