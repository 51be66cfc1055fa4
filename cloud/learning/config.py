"""The learner's configuration: ``LearnerConfig``, checked whole when it is built so a bad flag stops the command at
start with an error naming the field (``learner.<field>...``), never a traceback every round."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cloud.learning.algorithms.sac_agent import SACConfig
from cloud.learning.sampler import KINDS, LABELLED_KINDS, Ratios, SamplerConfig, group_kinds
from cloud.learning.staleness import StalenessBudget
from policies.lerobot_policy import check_lerobot_config

# Each algorithm by name and the kinds of steps it can learn from (cloud.learning.algorithms implements them):
# HG-DAgger only from actions a person chose, SAC from every transition.
TRAINS_ON: dict[str, tuple[str, ...]] = {"hg-dagger": LABELLED_KINDS, "sac": KINDS}
ALGORITHMS = tuple(TRAINS_ON)

BUILTIN_POLICY_TYPES = ("auto", "mlp", "cnn")


def check_policy_choices(policies: Any, algorithm: str) -> tuple[tuple[str, str, str], ...]:
    """``{dataset: type}`` / ``{dataset: (type, fields)}`` or (dataset, type, fields JSON) triples -> sorted
    triples; ValueError naming ``learner.policies.<dataset>``."""
    items = policies.items() if isinstance(policies, dict) else [(p[0], tuple(p[1:])) for p in policies]
    checked = {}
    for dataset, choice in items:
        policy_type, fields = (choice, {}) if isinstance(choice, str) else (choice[0], choice[1] if choice[1:] else {})
        where = f"learner.policies.{dataset}"
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"learner.policies: dataset names must be non-empty strings, got {dataset!r}")
        if isinstance(fields, str):
            try:
                fields = json.loads(fields)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: the policy config is not JSON: {err}") from None
        if not isinstance(fields, dict):
            raise ValueError(f"{where}: the policy config must be an object of fields, got {type(fields).__name__}")
        if policy_type not in BUILTIN_POLICY_TYPES:
            if algorithm != "hg-dagger":
                raise ValueError(f"{where}: {algorithm} trains its own actor; lerobot policies train with hg-dagger")
            try:
                check_lerobot_config(policy_type, fields)  # an unknown type or field fails here, not in a round
            except Exception as err:
                raise ValueError(f"{where}: {err}") from None
        elif fields and policy_type == "auto":
            raise ValueError(f"{where}: config fields need a policy type (mlp, cnn or a lerobot type)")
        checked[dataset] = (policy_type, json.dumps(fields, sort_keys=True))
    return tuple((dataset, t, f) for dataset, (t, f) in sorted(checked.items()))


def check_ratio_kinds(sampler: SamplerConfig, algorithm: str) -> None:
    """ValueError naming the ratio group when the sampler asks for steps ``algorithm`` cannot learn from."""
    trains_on = TRAINS_ON[algorithm]
    named: list[tuple[str, Ratios]] = [("learner.sampler.ratios", sampler.ratios or ())]
    named += [(f"learner.sampler.per_dataset.{dataset}", ratios) for dataset, ratios in sampler.per_dataset]
    for where, ratios in named:
        for group, _ in ratios:
            for kind in group_kinds(group):
                if kind not in trains_on:
                    raise ValueError(
                        f"{where}.{group}: {algorithm} cannot train on {kind!r} steps (it trains on "
                        f"{'+'.join(trains_on)}); leave {kind} out or choose another algorithm"
                    )


def _check_chunk_sizes(chunk_sizes: Any) -> tuple[tuple[str, int], ...]:
    sizes = chunk_sizes.items() if isinstance(chunk_sizes, dict) else chunk_sizes
    checked = {}
    for dataset, size in sizes:
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"learner.chunk_sizes: dataset names must be non-empty strings, got {dataset!r}")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1000:
            raise ValueError(f"learner.chunk_sizes.{dataset} must be an integer in 1..1000, got {size!r}")
        checked[dataset] = size
    return tuple(sorted(checked.items()))


@dataclass(frozen=True)
class LearnerConfig:
    first_round_episodes: int = 2  # demonstrations before the first version
    round_episodes: int = 5  # new finished episodes between versions
    train_steps: int = 1500  # gradient steps per version (SAC: updates per round)
    batch_size: int = 256
    learning_rate: float = 1e-3  # hg-dagger's (SAC has its own in ``sac``)
    poll_s: float = 1.0
    hidden: tuple[int, ...] = (256, 256)  # the policy's (SAC: the actor's) hidden layers
    algorithm: str = "hg-dagger"
    staleness_budget: int | None = None  # versions; None: no budget (see cloud.learning.staleness)
    staleness_mode: str = "drop"  # drop | downweight
    staleness_decay: str = "exp"  # downweight's decay: exp (budget = half-life) | linear
    staleness_interventions: bool = False  # interventions age too (demonstrations never do)
    sampler: SamplerConfig = SamplerConfig()
    sac: SACConfig = SACConfig()
    seed: int = 0
    chunk_sizes: tuple[tuple[str, int], ...] = (("phone", 10),)  # dataset -> actions per prediction (hg-dagger)
    # dataset -> (policy type, JSON of its config fields): "mlp", "cnn" or a lerobot type; unnamed datasets: auto
    policies: tuple[tuple[str, str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("first_round_episodes", "round_episodes", "train_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"learner.{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learner.learning_rate must be > 0, got {self.learning_rate}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"learner.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        try:
            _ = self.staleness
        except ValueError as err:
            raise ValueError(f"learner.{err}".replace("learner.staleness.", "learner.staleness_")) from err
        if not isinstance(self.sampler, SamplerConfig):
            raise ValueError(f"learner.sampler must be a SamplerConfig, got {type(self.sampler).__name__}")
        if not isinstance(self.sac, SACConfig):
            raise ValueError(f"learner.sac must be a SACConfig, got {type(self.sac).__name__}")
        check_ratio_kinds(self.sampler, self.algorithm)  # at start, not as a failure every round
        object.__setattr__(self, "chunk_sizes", _check_chunk_sizes(self.chunk_sizes))
        object.__setattr__(self, "policies", check_policy_choices(self.policies, self.algorithm))

    def chunk_size_for(self, dataset: str) -> int:
        return dict(self.chunk_sizes).get(dataset, 1)

    def policy_for(self, dataset: str) -> tuple[str, dict[str, Any]]:
        """(policy type, config fields) the learner trains for ``dataset``; type "auto" picks MLP or CNN."""
        for name, policy_type, fields in self.policies:
            if name == dataset:
                return policy_type, json.loads(fields)
        return "auto", {}

    @property
    def staleness(self) -> StalenessBudget:
        return StalenessBudget(
            self.staleness_budget, self.staleness_mode, self.staleness_decay, self.staleness_interventions
        )
