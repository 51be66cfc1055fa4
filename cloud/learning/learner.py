"""The learner loop: when a round starts for a dataset, publishing its policy, and the checkpoint around it.

``LearnerConfig.algorithm`` picks how a round trains (``cloud.learning.algorithms``: ``hg-dagger`` continues one
policy from round to round on the steps a person labelled; ``sac`` carries an actor, twin critics and a temperature
from round to round over online and demonstration data); everything else (when a round starts, publishing, the
checkpoint, running under torchrun) is shared.

A round starts once enough new episodes have ended since the last version. Its batches come from
``cloud.learning.sampler`` (explicit ratios between kinds of data, per dataset) with ``cloud.learning.staleness``'
weights: with ``staleness_budget`` set, on-policy steps recorded ``age`` versions before the learner's latest are
dropped or down-weighted; steps a person labelled are exempt unless ``staleness_interventions``.

After each publish the learner saves a checkpoint per dataset under ``checkpoint_dir`` (by default
``<data root>/learner/checkpoint/<dataset>/``, ``cloud.learning.checkpoint``). A restarted learner loads it and
carries on from that version and step, and from its weights and optimizer (unless ``fresh_start``), so it neither
retrains at once nor waits a whole round longer than it should. When the registry holds a newer version than the
checkpoint (the learner died between publishing and saving), the registry wins.

With ``curves`` (``cloud.learning.curves``; ``--track``, TensorBoard by default) rank 0 logs each round's losses,
throughput and staleness and each settled version's autonomous success and intervention rate.

Under ``torchrun`` (``cloud.learning.distributed``) every rank runs this loop: rank 0 decides each round and broadcasts
it, every rank trains on the same rows with its own batches under DistributedDataParallel, rank 0 publishes and saves.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry, PolicyVersion
from cloud.learning.algorithms.base import Algorithm, NothingNew, RoundJob, RoundResult, StepHook
from cloud.learning.algorithms.hg_dagger import HGDagger
from cloud.learning.algorithms.reward import RewardClassifierTraining, source_dataset
from cloud.learning.algorithms.sac import SAC
from cloud.learning.checkpoint import LearnerCheckpoint
from cloud.learning.config import REWARD_SUFFIX, LearnerConfig
from cloud.learning.curves import LearningCurves
from cloud.learning.distributed import DistContext
from cloud.learning.init_weights import InitWeights
from cloud.learning.step_index import StepIndex
from cloud.learning.streaming import FrameStream
from policies.factory import cpu_copy
from policies.weights import policy_to_bytes

log = logging.getLogger("fleetloop.learner")

BETWEEN_ROUNDS_SLICE = 100  # gradient steps between two looks at the store while no round is due

# The algorithms by ``LearnerConfig.algorithm``; cloud.learning.config.TRAINS_ON names the same ones.
ALGORITHM_TYPES: dict[str, type[Algorithm[Any]]] = {HGDagger.name: HGDagger, SAC.name: SAC}


@dataclass
class _DatasetState:
    episodes_at_last_version: int = -1
    versions: list[PolicyVersion] = field(default_factory=list)
    total_steps: int = 0  # gradient steps over every version of this dataset
    trainable: Any = None  # the algorithm's state from its last round (restored from the checkpoint after a restart)
    rounds: int = 0  # rounds trained by this process
    trained_rows: int = 0  # committed rows the last round saw: the next publishes only with new data past them


@dataclass(frozen=True)
class _Round:
    """What rank 0 decided for one dataset: every rank trains on rows [0, rows) at ``current_version``."""

    dataset: str
    finished: int
    rows: int
    current_version: int


class Learner:
    """Watches the store and trains a round per dataset whenever enough new episodes have ended."""

    def __init__(
        self,
        store: EpisodeStore,
        registry: PolicyRegistry,
        config: LearnerConfig | None = None,
        checkpoint_dir: str | Path | None = None,
        dist: DistContext | None = None,
        on_step: StepHook | None = None,
        curves: LearningCurves | None = None,
    ) -> None:
        """``curves``: where rank 0 logs each round's numbers and each version's (``cloud.learning.curves``)."""
        self.store = store
        self.registry = registry
        self.config = config if config is not None else LearnerConfig()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.dist = dist or DistContext()
        self.curves = curves if self.dist.is_main else None
        init = InitWeights(self.config.init, registry) if self.config.init else None
        # Both algorithms share the rows held of each dataset and the stream of its cameras (one cache).
        self.steps = StepIndex(store, self.config.large_row_bytes)
        self.frames = FrameStream(store, self.config.cache_bytes, self.config.loader_workers)
        self.algorithm: Algorithm[Any] = ALGORITHM_TYPES[self.config.algorithm](
            self.config, store, self.dist, on_step, init, self.steps, self.frames
        )
        # Reward classifiers' rounds (``<dataset>.reward``, LearnerConfig.reward_classifiers), beside the policies'.
        self.reward_algorithm = RewardClassifierTraining(
            self.config, store, self.dist, on_step, steps=self.steps, frames=self.frames
        )
        self._datasets: dict[str, _DatasetState] = {}

    def _algorithm_for(self, name: str) -> Algorithm[Any]:
        """What trains the policy ``name``: a dataset's algorithm, or its reward classifier's."""
        reward = name.endswith(REWARD_SUFFIX) and source_dataset(name) in self.config.reward_classifiers
        return self.reward_algorithm if reward else self.algorithm

    def _checkpoint(self, dataset: str) -> LearnerCheckpoint | None:
        return LearnerCheckpoint(self.checkpoint_dir / dataset) if self.checkpoint_dir is not None else None

    def _resume(self, dataset: str, state: _DatasetState, finished: int) -> None:
        """Where a (re)started learner carries on: its checkpoint, else the registry's latest version."""
        latest = self.registry.latest(dataset)
        checkpoint = self._checkpoint(dataset)
        saved, trainable, algorithm = None, None, self._algorithm_for(dataset)
        try:
            saved = checkpoint.load() if checkpoint is not None else None
            if saved is not None and saved.algorithm != algorithm.name:  # a switch: routine, not a fault
                log.info(
                    "%s was trained by %s until now; %s starts on it afresh from the published version",
                    dataset,
                    saved.algorithm,
                    algorithm.name,
                )
                saved = None
            trainable = algorithm.restore(saved) if saved is not None else None
            if trainable is not None and self.config.fresh_start:
                log.info("%s: starting afresh as asked; v%d's weights are not continued", dataset, saved.version)
                trainable = None
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            log.error("ignoring the learner checkpoint of %s: %s", dataset, err)
            saved, trainable = None, None
        if saved is not None and latest is not None and saved.version == latest.version:
            state.episodes_at_last_version = saved.episodes_at_version
            state.total_steps = saved.total_steps
            state.trainable = trainable
            state.trained_rows = saved.rows_at_version
            log.info("resuming from checkpoint: v%d, step %d (%s)", saved.version, saved.total_steps, dataset)
            return
        if saved is not None:
            state.trained_rows = saved.rows_at_version  # the registry's version saw at least these rows
            log.warning(
                "the learner checkpoint of %s is at v%d but the registry at %s; carrying on from the registry",
                dataset,
                saved.version,
                f"v{latest.version}" if latest else "nothing",
            )
        # After a restart, carry on from the published version instead of retraining at once.
        state.episodes_at_last_version = finished if latest else 0
        if latest is not None:
            log.info("resuming %s from the published v%d", dataset, latest.version)

    def _plan(self) -> list[_Round]:
        """Rank 0: the datasets with enough new episodes for a round."""
        self.store.refresh()
        datasets = self.store.datasets()
        # (policy name, the dataset it learns from): each dataset's policy, then the reward classifiers asked for.
        names = [(dataset, dataset) for dataset in datasets]
        names += [(d + REWARD_SUFFIX, d) for d in self.config.reward_classifiers if d in datasets]
        plan = []
        for name, dataset in names:
            state = self._datasets.setdefault(name, _DatasetState())
            finished = sum(1 for e in self.store.episodes(dataset) if e.done and not e.discarded)
            if state.episodes_at_last_version < 0:
                self._resume(name, state, finished)
            latest = self.registry.latest(name)
            needed = self.config.round_episodes if latest else self.config.first_round_episodes
            if finished - state.episodes_at_last_version < needed:
                continue
            rows = self.store.committed_rows(dataset)
            plan.append(_Round(name, finished, rows, latest.version if latest else 0))
        return plan

    def poll_once(self) -> list[PolicyVersion]:
        """Trains and publishes a version for every dataset that has enough new episodes.

        Under torchrun every rank calls this together: rank 0's plan is broadcast, every rank trains, rank 0
        publishes (other ranks return an empty list)."""
        return self._poll(stop=False)[0]

    def _poll(self, stop: bool) -> tuple[list[PolicyVersion], bool, int]:
        """One iteration of every rank: (published versions, stop, rounds trained)."""
        message = {"stop": stop, "rounds": []}
        if self.dist.is_main and not stop:
            message["rounds"] = [vars(r) for r in self._plan()]
        message = self.dist.broadcast(message)
        if message["stop"]:
            return [], True, 0
        if not self.dist.is_main:
            self.store.refresh()
        published, trained = [], 0
        for item in (_Round(**r) for r in message["rounds"]):
            state = self._datasets.setdefault(item.dataset, _DatasetState())
            if state.episodes_at_last_version < 0:  # a rank other than 0 meets this dataset
                self._resume(item.dataset, state, item.finished)
            rounds_before = state.rounds
            version = self.train_and_publish(
                item.dataset, item.finished, state, rows=item.rows, current_version=item.current_version
            )
            trained += state.rounds - rounds_before  # every rank trains the round; rank 0 alone publishes it
            if state.rounds > rounds_before:
                state.episodes_at_last_version = item.finished
            if version is not None:
                state.versions.append(version)
                published.append(version)
                self._save_checkpoint(item.dataset, version.version, item.finished, state)
        return published, False, trained

    def _save_checkpoint(self, dataset: str, version: int, finished: int, state: _DatasetState) -> None:
        checkpoint = self._checkpoint(dataset)
        if checkpoint is None or state.trainable is None:
            return
        algorithm = self._algorithm_for(dataset)
        saved = algorithm.saved_state(state.trainable)
        checkpoint.save(
            version,
            state.total_steps,
            finished,
            saved.policy,
            saved.optimizer,
            algorithm=algorithm.name,
            modules=saved.modules or None,
            optimizers=saved.optimizers or None,
            rows=state.trained_rows,
            origin=saved.origin,
        )

    def train_and_publish(
        self,
        dataset: str,
        finished_episodes: int,
        state: _DatasetState | None = None,
        rows: int | None = None,
        current_version: int | None = None,
    ) -> PolicyVersion | None:
        """Trains one round on rows ``[0, rows)`` (all committed by default) and publishes (on rank 0).

        ``current_version``: the version whose steps have age 0 (default: the registry's latest)."""
        state = state if state is not None else _DatasetState()
        if current_version is None:
            latest = self.registry.latest(dataset)
            current_version = latest.version if latest else 0
        started = time.perf_counter()
        job = RoundJob(dataset, rows, current_version, state.rounds, state.trained_rows)
        algorithm = self._algorithm_for(dataset)
        result = algorithm.train_round(job, state.trainable)
        if result is None:
            return None
        if isinstance(result, NothingNew):
            # Wait for the next round's episodes rather than look again at every poll.
            state.trained_rows, state.episodes_at_last_version = result.rows, finished_episodes
            trains_on = "+".join(algorithm.trains_on)
            log.info("%s: no new steps to train on (%s) since v%d; not publishing", dataset, trains_on, current_version)
            return None
        trained_s = time.perf_counter() - started
        state.trainable, state.trained_rows = result.trainable, result.rows
        policy, note, loss = result.policy, result.note, result.loss
        state.rounds += 1
        state.total_steps += result.steps or self.config.train_steps
        if not self.dist.is_main:
            return None
        on_cpu = all(t.device.type == "cpu" for t in policy.state_dict().values())
        policy_cpu = policy if on_cpu else cpu_copy(policy)
        version = self.registry.publish(
            dataset, policy_to_bytes(policy_cpu), note=f"{note}, {finished_episodes} episodes"
        )
        log.info(
            "published %s v%d: %s from %d finished episodes in %.1f s (loss %.4f)",
            dataset,
            version.version,
            note,
            finished_episodes,
            time.perf_counter() - started,
            loss,
        )
        self._track(dataset, state, result, trained_s, version, finished_episodes)
        return version

    def _track(
        self, name: str, state: _DatasetState, result: RoundResult, trained_s: float, version: PolicyVersion, done: int
    ) -> None:
        """The round's numbers and the versions settled since, in the policy's curves (``cloud.learning.curves``)."""
        if self.curves is None:
            return
        values = dict(result.metrics)
        if trained_s > 0 and result.steps:
            values["throughput/steps_per_s"] = result.steps / trained_s
            values["throughput/samples_per_s"] = result.samples * self.dist.world_size / trained_s
        values.update({"throughput/round_s": trained_s, "policy/version": version.version, "data/episodes": done})
        values["data/rows"] = result.rows
        self.curves.round(name, state.total_steps, values)
        if self._algorithm_for(name) is not self.reward_algorithm:  # a reward classifier drives no robot
            self.curves.versions(name, self.store, name)

    def close(self) -> None:
        """Logs every version's latest numbers and closes the curves' runs (rank 0; a no-op elsewhere)."""
        if self.curves is None:
            return
        try:
            self.store.refresh()
            for name in self._datasets:
                if self._algorithm_for(name) is not self.reward_algorithm and name in self.store.datasets():
                    self.curves.versions(name, self.store, name, final=True)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            log.error("could not log the last versions' numbers: %s", err)
        self.curves.close()

    def train_between(self) -> int:
        """One slice of training between rounds for every policy that has one to continue; the steps trained.

        Under torchrun every rank calls it after the same poll: what it trains follows from rounds every rank
        trained together (a policy restored from a checkpoint has no round's data to continue yet)."""
        trained = 0
        for name in sorted(self._datasets):  # one order on every rank, whichever dataset each met first
            state = self._datasets[name]
            if state.trainable is not None:
                steps = self._algorithm_for(name).train_between(state.trainable, BETWEEN_ROUNDS_SLICE)
                state.total_steps += steps
                trained += steps
        return trained

    def run(self, stop: threading.Event, max_rounds: int = 0) -> None:
        """Polls until ``stop`` (rank 0's decides for every rank) or after ``max_rounds`` trained rounds (0: no cap);
        while no round is due it trains between rounds (``LearnerConfig.train_between``) a slice at a time."""
        log.info("learner watching %s", self.store.root)
        rounds = 0
        while True:
            between = 0
            try:
                _, stopping, trained = self._poll(stop=stop.is_set() or bool(max_rounds and rounds >= max_rounds))
                if not stopping and not trained and self.config.train_between and not self.config.synchronous:
                    between = self.train_between()
            except Exception:
                if self.dist.distributed:
                    raise  # a rank that skips a collective would hang the others: stop them all
                log.exception("learner round failed; retrying at the next poll")
                stopping, trained = False, 0
            if stopping:
                return
            rounds += trained
            if not (max_rounds and rounds >= max_rounds) and not between:
                stop.wait(self.config.poll_s)


HGDaggerLearner = Learner  # the name it had while HG-DAgger was its only algorithm
