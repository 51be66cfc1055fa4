"""How autonomy grows across policy versions, computed from the episode store: the demo's table and summary.json,
and the learner's per-version curves (``cloud.learning.curves``) read it."""

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
