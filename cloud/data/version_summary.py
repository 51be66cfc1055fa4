"""How autonomy grows across policy versions, computed from the episode store: the demo's table and summary.json,
and the learner's per-version curves (``cloud.learning.curves``) read it; and episode by episode, the rolling
autonomous success over the last 20 episodes the learning test and the fleet-scaling bench count in."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cloud.data.store import EpisodeStore


@dataclass(frozen=True)
class VersionSummary:
    version: int
    episodes: int  # finished episodes that started under this version
    autonomous_success: float | None  # share of those that succeeded with no intervention; None before any ended
    intervention_rate: float  # share of this version's steps driven by the operator
    steps: int
    steps_per_s: float
    robots: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(store: EpisodeStore, dataset: str, refresh: bool = True) -> list[VersionSummary]:
    """Every version's numbers; ``refresh=False`` reads the store as its last refresh left it."""
    if refresh:
        store.refresh()
    if dataset not in store.datasets():
        return []
    rows = store.read(dataset, columns=["policy_version", "intervention", "t_mono_ns"])
    episodes = [e for e in store.episodes(dataset) if e.done]
    versions = sorted(set(rows["policy_version"].tolist()) | {e.first_policy_version for e in episodes})
    out = []
    for version in versions:
        in_version = rows["policy_version"] == version
        steps = int(in_version.sum())
        started_here = [e for e in episodes if e.first_policy_version == version]
        autonomous = sum(1 for e in started_here if e.success and e.intervention_steps == 0)
        times = rows["t_mono_ns"][in_version]
        span_s = float(times.max() - times.min()) / 1e9 if steps > 1 else 0.0
        out.append(
            VersionSummary(
                version=int(version),
                episodes=len(started_here),
                autonomous_success=round(autonomous / len(started_here), 3) if started_here else None,
                intervention_rate=round(float(rows["intervention"][in_version].mean()), 3) if steps else 0.0,
                steps=steps,
                steps_per_s=round(steps / span_s, 1) if span_s > 0 else 0.0,
                robots=len({e.resource_id for e in started_here}),
            )
        )
    return out


def autonomy_climbed(summary: list[VersionSummary], min_episodes: int = 3) -> tuple[float, float]:
    """(first, best) autonomous success among versions with at least ``min_episodes`` episodes."""
    rated = [s.autonomous_success for s in summary if s.autonomous_success is not None and s.episodes >= min_episodes]
    if not rated:
        return 0.0, 0.0
    return rated[0], float(np.max(rated))


ROLLING_WINDOW = 20  # episodes: the fleet's "rolling" success, as the issue and SOP count it


@dataclass(frozen=True)
class EpisodeOutcome:
    """One finished episode, in the order episodes ended: when (seconds after the dataset's first step), under which
    version it started, and whether it succeeded with no intervention."""

    ended_s: float
    version: int
    autonomous: bool


def episode_outcomes(store: EpisodeStore, dataset: str, refresh: bool = True) -> list[EpisodeOutcome]:
    """Every finished, kept episode of ``dataset`` in the order they ended (steps' monotonic times: one host's
    clock for a simulated fleet; a real fleet's robots are ordered by each one's own clock)."""
    if refresh:
        store.refresh()
    if dataset not in store.datasets():
        return []
    episodes = [e for e in store.episodes(dataset) if e.done and not e.discarded]
    if not episodes:
        return []
    rows = store.read(dataset, columns=["episode_index", "t_mono_ns"])
    index, times = rows["episode_index"], rows["t_mono_ns"]
    ended = np.full(int(index.max()) + 1, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(ended, index, times)
    start = int(times.min())
    outcomes = [
        EpisodeOutcome(
            (int(ended[e.index]) - start) / 1e9, e.first_policy_version, e.success and e.intervention_steps == 0
        )
        for e in episodes
        if e.index < len(ended)
    ]
    return sorted(outcomes, key=lambda o: o.ended_s)


def rolling_success(outcomes: list[EpisodeOutcome], window: int = ROLLING_WINDOW) -> list[float | None]:
    """Autonomous success over the last ``window`` episodes after each episode (None until ``window`` ended)."""
    autonomous = np.array([o.autonomous for o in outcomes], dtype=np.float64)
    sums = np.concatenate([[0.0], np.cumsum(autonomous)])
    return [
        None if i + 1 < window else float(sums[i + 1] - sums[i + 1 - window]) / window for i in range(len(outcomes))
    ]


def first_reaching(rolling: list[float | None], target: float) -> int | None:
    """How many episodes had ended when the rolling success first reached ``target`` (None: not yet)."""
    for i, value in enumerate(rolling):
        if value is not None and value >= target:
            return i + 1
    return None
