"""What the learner shows of its work in an experiment tracker (``cloud.learning.tracking``), per policy.

After every round it trains (step = the policy's gradient steps so far, carried over restarts by the checkpoint):

- ``train/<name>``: each loss (and statistic) the algorithm reports: ``train/loss`` for HG-DAgger;
  ``train/critic_loss``, ``train/actor_loss``, ``train/temperature``, ``train/q`` for SAC;
- ``throughput/steps_per_s``, ``throughput/samples_per_s`` (over every rank), ``throughput/round_s``;
- ``staleness/mean_age``, ``staleness/max_age``, ``staleness/stale_share``: how many versions the policy-made steps
  of its batches lag the version it trained on (``Sampler.age_stats``);
- ``policy/version`` (the one it published), ``data/episodes`` (finished episodes), ``data/rows``.

Per policy version (step = the version), once the version is settled (a newer one is out and every episode that
started under it has ended, or two newer ones are out), and for every version left when the learner stops:
``per_version/autonomous_success`` (finished episodes that succeeded with no intervention, as a share),
``per_version/intervention_rate`` (the share of its steps a person drove) and ``per_version/episodes``, from the
store's episodes (``cloud.data.version_summary``, the demo's table). ``<run dir>/versions_logged`` keeps the
highest version logged, so a restarted learner does not log one twice. A reward classifier (``<dataset>.reward``)
runs no policy on robots, so it has no per-version numbers.

A tracker that fails is logged once and dropped: the learner keeps training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from cloud.data.store import EpisodeStore
from cloud.data.version_summary import VersionSummary, summarize
from cloud.learning.tracking import Tracker

log = logging.getLogger("fleetloop.learner")

TrackerFactory = Callable[[str], Tracker | None]  # policy name -> its run (None: not tracked)


class LearningCurves:
    """Each policy's run, opened at its first round; ``runs_dir``: where ``versions_logged`` markers live."""

    def __init__(self, open_run: TrackerFactory, runs_dir: Path | None = None) -> None:
        self.open_run = open_run
        self.runs_dir = runs_dir
        self._runs: dict[str, Tracker | None] = {}
        self._logged: dict[str, int] = {}  # the highest version whose numbers are logged, per policy

    def _run(self, policy: str) -> Tracker | None:
        if policy not in self._runs:
            try:
                self._runs[policy] = self.open_run(policy)
            except Exception as err:  # a tracker must never stop the training
                log.error(
                    "cannot open the experiment tracker's run of %s (%s); training goes on without it", policy, err
                )
                self._runs[policy] = None
        return self._runs[policy]

    def _log(self, policy: str, step: int, values: Mapping[str, float]) -> None:
        run = self._run(policy)
        if run is None or not values:
            return
        try:
            run.log_scalars(step, values)
        except Exception as err:
            log.error("the experiment tracker failed for %s (%s); no more curves of it in this run", policy, err)
            self._runs[policy] = None

    def round(self, policy: str, step: int, values: Mapping[str, float]) -> None:
        """One trained round's numbers (see the module docstring for the tags)."""
        self._log(policy, step, values)

    def versions(self, policy: str, store: EpisodeStore, dataset: str, final: bool = False) -> None:
        """Logs the versions of ``policy`` settled since the last call (all of them when ``final``), in order,
        from the store's episodes of ``dataset`` as the store's last refresh left them."""
        if self._run(policy) is None:
            return
        summary = summarize(store, dataset, refresh=False)
        running = {e.first_policy_version for e in store.episodes(dataset) if not e.done and not e.discarded}
        logged = self._logged.get(policy)
        if logged is None:
            logged = self._logged[policy] = self._read_marker(policy)
        newest = max((s.version for s in summary), default=-1)
        for item in summary:
            if item.version <= logged:
                continue
            settled = item.version + 2 <= newest or (item.version < newest and item.version not in running)
            if not (settled or final):
                break  # in order: a later version waits for this one
            self._log(policy, item.version, version_values(item))
            logged = item.version
        if logged != self._logged[policy]:
            self._logged[policy] = logged
            self._write_marker(policy, logged)

    def _marker(self, policy: str) -> Path | None:
        return self.runs_dir / policy / "versions_logged" if self.runs_dir is not None else None

    def _read_marker(self, policy: str) -> int:
        marker = self._marker(policy)
        try:
            return int(marker.read_text().strip()) if marker is not None and marker.exists() else -1
        except (OSError, ValueError):
            return -1

    def _write_marker(self, policy: str, version: int) -> None:
        marker = self._marker(policy)
        if marker is None:
            return
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{version}\n")
        except OSError as err:
            log.warning("cannot note the versions logged for %s in %s: %s", policy, marker, err)

    def close(self) -> None:
        for policy, run in self._runs.items():
            if run is None:
                continue
            try:
                run.close()
            except Exception as err:
                log.error("the experiment tracker failed closing the run of %s: %s", policy, err)
        self._runs.clear()


def version_values(item: VersionSummary) -> dict[str, float]:
    """A version's per-version tags; autonomous success only once one of its episodes has ended."""
    values = {"per_version/episodes": float(item.episodes), "per_version/intervention_rate": item.intervention_rate}
    if item.autonomous_success is not None:
        values["per_version/autonomous_success"] = item.autonomous_success
    return values
