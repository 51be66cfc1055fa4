"""The ``Algorithm`` interface: what a learner round needs from an algorithm, and the helpers every one shares.

An algorithm names the kinds of steps it trains on, builds its trainable state back from a checkpoint it saved,
trains one round (returning the policy to publish and the state to carry into the next round) and says what a
checkpoint keeps of that state. The learner loop owns everything else: when a round starts, publishing, saving.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from cloud.data.store import EpisodeStore
from cloud.learning.checkpoint import Checkpoint
from cloud.learning.config import LearnerConfig
from cloud.learning.distributed import DistContext
from cloud.learning.init_weights import InitWeights
from cloud.learning.sampler import Ratios, Sampler, StepTable
from cloud.learning.step_index import StepIndex
from cloud.learning.streaming import FrameStream, Streamed
from policies.base import Policy

# on_step(dataset, step within the round, the modules being trained): e.g. cloud.learning.distributed's parameter trace.
StepHook = Callable[[str, int, dict[str, nn.Module]], None]


@dataclass(frozen=True)
class RoundJob:
    """One round of one dataset: train on committed rows ``[0, rows)`` (None: all); steps of ``current_version``
    have age 0; ``rounds_before``: rounds this process trained on the dataset already (it seeds the batches);
    ``trained_rows``: the rows the last round saw (a round trains only when a step it learns from lies past them)."""

    dataset: str
    rows: int | None
    current_version: int
    rounds_before: int
    trained_rows: int = 0


@dataclass
class RoundResult[Trainable]:
    """A trained round: the state to carry on from and the policy to publish, with a note and the final loss.

    ``metrics``: what the learner's curves show of the round (``cloud.learning.curves``), by tag: ``train/<name>``
    for each loss (and statistic) the algorithm reports, ``staleness/<name>`` (``Sampler.age_stats``);
    ``samples``: the steps the round trained on, summed over its gradient steps (this rank's), ``steps`` those."""

    trainable: Trainable
    policy: Policy
    note: str
    loss: float
    rows: int  # the committed rows the round saw
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0


@dataclass(frozen=True)
class NothingNew:
    """A round that found no step it learns from past the rows the last round saw: nothing new to publish (a
    version trained on the same data would only replace, say, a manual rollback)."""

    rows: int  # the committed rows the round saw


@dataclass
class SavedState:
    """What a checkpoint keeps: the published policy and its optimizer, and further modules and optimizers by
    name (SAC's critics, their targets, the temperature)."""

    policy: Policy
    optimizer: torch.optim.Optimizer
    modules: dict[str, nn.Module] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    origin: str = ""  # the starting weights the policy was first trained from ("": a random start)


class Algorithm[Trainable](ABC):
    """One way to train a round; ``Trainable`` is the state it carries from round to round."""

    name: ClassVar[str]
    trains_on: ClassVar[tuple[str, ...]]  # the kinds of steps (cloud.learning.sampler.KINDS) it learns from

    def __init__(
        self,
        config: LearnerConfig,
        store: EpisodeStore,
        dist: DistContext,
        on_step: StepHook | None = None,
        init: InitWeights | None = None,
        steps: StepIndex | None = None,
        frames: FrameStream | None = None,
    ) -> None:
        """``init``: the weights datasets' rounds start from (``LearnerConfig.init``), where the algorithm takes any;
        ``steps``, ``frames``: the rows held and the large columns' stream, shared with the learner's other
        algorithms (each its own by default)."""
        self.config = config
        self.store = store
        self.dist = dist
        self.on_step = on_step
        self.init = init
        self.steps = steps if steps is not None else StepIndex(store, config.large_row_bytes)
        self.frames = frames if frames is not None else FrameStream(store, config.cache_bytes, config.loader_workers)

    @abstractmethod
    def restore(self, saved: Checkpoint) -> Trainable:
        """The state a checkpoint this algorithm saved holds; ValueError when it does not fit."""

    @abstractmethod
    def train_round(self, job: RoundJob, trainable: Trainable | None) -> RoundResult[Trainable] | NothingNew | None:
        """Trains one round from ``trainable`` (None: nothing yet); None when there is too little data yet,
        ``NothingNew`` when no step it learns from arrived since the last round (``has_new_rows``)."""

    @abstractmethod
    def saved_state(self, trainable: Trainable) -> SavedState:
        """What a checkpoint keeps of ``trainable``."""

    def train_between(self, trainable: Trainable, steps: int) -> int:
        """Trains ``trainable`` up to ``steps`` more gradient steps while no round is due (on what it trained on
        last); the steps trained: 0 by default, for an algorithm that trains in rounds only."""
        return 0

    def seed(self, rounds_before: int) -> int:
        """The seed of a round's batches: each rank draws its own."""
        return self.config.seed + self.dist.rank

    def sampler(
        self, table: StepTable, ratios: Ratios | None, current_version: int, eligible: np.ndarray | None = None
    ) -> Sampler:
        priority = self.config.sampler.foresight_weights(table)
        return Sampler.build(table, ratios, self.trains_on, self.config.staleness, current_version, eligible, priority)

    def streamed(self, table: StepTable, keys: dict[str, tuple[str, np.ndarray]]) -> Streamed | None:
        """The large columns a round trains on, by batch key: (store column, store row of each training position);
        None when the table holds every column."""
        return Streamed(self.frames, table.dataset, keys) if keys else None

    def step_hook(self, dataset: str, modules: dict[str, nn.Module]) -> Callable[[int], None] | None:
        if self.on_step is None:
            return None
        hook = self.on_step
        return lambda step: hook(dataset, step, modules)

    def has_new_rows(self, sampler: Sampler, job: RoundJob) -> bool:
        """Whether the round draws a row past those the last round saw (committed rows only grow: later is new);
        always under the synchronous schedule, whose robots wait for a version every round."""
        return self.config.synchronous or (bool(sampler.rows.size) and int(sampler.rows[-1]) >= job.trained_rows)

    @staticmethod
    def round_metrics(
        losses: dict[str, float],
        sampler: Sampler | None = None,
        table: StepTable | None = None,
        job: RoundJob | None = None,
    ) -> dict[str, float]:
        """A round's ``RoundResult.metrics``: its ``losses`` by name, and the staleness of what ``sampler`` drew."""
        metrics = {f"train/{name}": float(value) for name, value in losses.items()}
        if sampler is not None and table is not None and job is not None:
            ages = sampler.age_stats(table.columns["policy_version"], job.current_version)
            metrics.update({f"staleness/{name}": value for name, value in ages.items()})
        return metrics

    @staticmethod
    def describe(sampler: Sampler) -> str:
        """`` (online 40 at 0.50, ...)``: what a round's batches mixed, for the version's note ("" when one group)."""
        sizes = sampler.group_sizes()
        parts = []
        if len(sizes) > 1:
            shares = sampler.shares()
            parts = [f"{name} {sizes[name]} at {shares[name]:.2f}" for name in sizes]
        if sampler.boosted:
            parts.append(f"{sampler.boosted} where the foresight was wrong weighted up")
        return f" ({', '.join(parts)})" if parts else ""
