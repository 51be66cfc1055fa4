"""The learner's configuration: ``LearnerConfig``, checked whole when it is built so a bad flag stops the command at
start with a ``ConfigError`` naming the field (``learner.<field>...``), never a traceback every round."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from cloud.data.version_registry import check_policy_name
from cloud.learning.algorithms.sac_agent import SACConfig
from cloud.learning.sampler import KINDS, LABELLED_KINDS, Ratios, SamplerConfig, group_kinds
from cloud.learning.staleness import StalenessBudget, StalenessDecay, StalenessMode
from hal.config import CodeConfig, ConfigError, ConfigModel, Items, invalid
from policies.base import Width
from policies.lerobot_policy import check_lerobot_config
from policies.lora import MAX_RANK
from policies.reward_classifier import ClassifierEncoder
from protocol.limits import REWARD_SUFFIX

# Each algorithm by name and the kinds of steps it can learn from (cloud.learning.algorithms implements them):
# HG-DAgger only from actions a person chose, SAC from every transition.
Algorithm = Literal["hg-dagger", "sac"]
TRAINS_ON: dict[str, tuple[str, ...]] = {"hg-dagger": LABELLED_KINDS, "sac": KINDS}
AtLeastOne = Annotated[int, Field(ge=1)]

BUILTIN_POLICY_TYPES = ("auto", "mlp", "cnn")
_POLICY_NAME_LENGTH = 64


class RewardTraining(ConfigModel):
    """How the learner labels frames for a reward classifier and trains it (cloud.learning.algorithms.reward)."""

    positive_steps: AtLeastOne = 3  # the last N steps of a successful episode are success frames
    ambiguous_steps: Annotated[int, Field(ge=0)] = 3  # the N steps before them are left out (neither label)
    train_steps: AtLeastOne = 300
    batch_size: AtLeastOne = 64
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    encoder: ClassifierEncoder = ClassifierEncoder()  # the frozen CNN (random weights: no hub download)
    hidden_dim: Width = 256
    latent_dim: Width = 256


def _check_reward_datasets(datasets: tuple[str, ...]) -> None:
    """Each names a dataset whose classifier can be published under ``<dataset>.reward``, once."""
    for index, dataset in enumerate(datasets):
        if dataset.endswith(REWARD_SUFFIX):
            raise invalid(f"{dataset!r} names a classifier; name the dataset it judges", "reward_classifiers", index)
        try:
            check_policy_name(dataset + REWARD_SUFFIX)
        except ValueError:
            why = f"{dataset!r} must be 1-{_POLICY_NAME_LENGTH - len(REWARD_SUFFIX)} letters, digits, '_', '.', '-'"
            raise invalid(why, "reward_classifiers", index) from None
        if dataset in datasets[:index]:
            raise invalid(f"{dataset!r} is named twice", "reward_classifiers", index)


def _policy_choices(policies: Any) -> tuple[tuple[str, str, str], ...]:
    """``{dataset: type}`` / ``{dataset: (type, fields)}`` or (dataset, type, fields JSON) triples -> sorted
    triples; errors name ``policies.<dataset>``. What fits which algorithm: ``_check_policy_choices``."""
    items = policies.items() if isinstance(policies, dict) else [(p[0], tuple(p[1:])) for p in policies]
    checked = {}
    for dataset, choice in items:
        policy_type, fields = (choice, {}) if isinstance(choice, str) else (choice[0], choice[1] if choice[1:] else {})
        if not isinstance(dataset, str) or not dataset:
            raise invalid(f"dataset names must be non-empty strings, got {dataset!r}", "policies")
        if isinstance(fields, str):
            try:
                fields = json.loads(fields)
            except json.JSONDecodeError as err:
                raise invalid(f"the policy config is not JSON: {err}", "policies", dataset) from None
        if not isinstance(fields, dict):
            why = f"the policy config must be an object of fields, got {type(fields).__name__}"
            raise invalid(why, "policies", dataset)
        checked[dataset] = (policy_type, json.dumps(fields, sort_keys=True))
    return tuple((dataset, t, f) for dataset, (t, f) in sorted(checked.items()))


def _check_policy_choices(policies: tuple[tuple[str, str, str], ...], algorithm: str) -> None:
    for dataset, policy_type, fields in policies:
        if policy_type not in BUILTIN_POLICY_TYPES:
            if algorithm != "hg-dagger":
                why = f"{algorithm} trains its own actor; lerobot policies train with hg-dagger"
                raise invalid(why, "policies", dataset)
            try:
                check_lerobot_config(policy_type, json.loads(fields))  # an unknown type or field fails here
            except Exception as err:
                raise invalid(str(err), "policies", dataset) from None
        elif fields != "{}" and policy_type == "auto":
            raise invalid("config fields need a policy type (mlp, cnn or a lerobot type)", "policies", dataset)


def _init_sources(init: Any) -> tuple[tuple[str, str], ...]:
    """A mapping or pairs of dataset -> source as sorted pairs; errors name ``init.<dataset>``."""
    checked: dict[str, str] = {}
    for dataset, source in init.items() if isinstance(init, dict) else init:
        if not isinstance(dataset, str) or not dataset:
            raise invalid(f"dataset names must be non-empty strings, got {dataset!r}", "init")
        if not isinstance(source, str) or not source:
            raise invalid(f"must name a folder, a file or 'registry', got {source!r}", "init", dataset)
        if dataset in checked:
            raise invalid("given twice: a dataset's rounds start from one policy", "init", dataset)
        checked[dataset] = source
    return tuple(sorted(checked.items()))


def _check_init_sources(init: tuple[tuple[str, str], ...], policies: tuple, algorithm: str) -> None:
    chosen = {dataset for dataset, _, _ in policies}
    for dataset, _ in init:
        if algorithm != "hg-dagger":
            why = f"{algorithm} trains its own actor from scratch; a starting policy fine-tunes with hg-dagger"
            raise invalid(why, "init", dataset)
        if dataset in chosen:
            why = "the starting policy fixes the architecture; leave out the dataset's own policy type and config"
            raise invalid(why, "init", dataset)


def _adapter_ranks(adapters: Any) -> tuple[tuple[str, int], ...]:
    """A mapping or pairs of dataset -> LoRA rank as sorted pairs; errors name ``adapters.<dataset>``."""
    checked: dict[str, int] = {}
    for dataset, rank in adapters.items() if isinstance(adapters, dict) else adapters:
        if not isinstance(dataset, str) or not dataset:
            raise invalid(f"dataset names must be non-empty strings, got {dataset!r}", "adapters")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_RANK:
            raise invalid(f"the rank must be an integer in 1..{MAX_RANK}, got {rank!r}", "adapters", dataset)
        if dataset in checked:
            raise invalid("given twice", "adapters", dataset)
        checked[dataset] = rank
    return tuple(sorted(checked.items()))


def _check_adapters(adapters: tuple[tuple[str, int], ...], init: tuple[tuple[str, str], ...]) -> None:
    starts = {dataset for dataset, _ in init}
    for dataset, _ in adapters:
        if dataset not in starts:
            why = "adapters train around a pretrained policy: give the dataset's starting weights with init too"
            raise invalid(why, "adapters", dataset)


def _check_ratio_kinds(sampler: SamplerConfig, algorithm: str) -> None:
    """An error naming the ratio group when the sampler asks for steps ``algorithm`` cannot learn from."""
    trains_on = TRAINS_ON[algorithm]
    named: list[tuple[tuple[str, ...], Ratios]] = [(("sampler", "ratios"), sampler.ratios or ())]
    named += [(("sampler", "per_dataset", dataset), ratios) for dataset, ratios in sampler.per_dataset]
    for where, ratios in named:
        for group, _ in ratios:
            for kind in group_kinds(group):
                if kind not in trains_on:
                    why = (
                        f"{algorithm} cannot train on {kind!r} steps (it trains on {'+'.join(trains_on)}); "
                        f"leave {kind} out or choose another algorithm"
                    )
                    raise invalid(why, *where, group)


def _chunk_sizes(chunk_sizes: Any) -> tuple[tuple[str, int], ...]:
    """A mapping or pairs of dataset -> chunk size as sorted pairs; errors name ``chunk_sizes.<dataset>``."""
    sizes = chunk_sizes.items() if isinstance(chunk_sizes, dict) else chunk_sizes
    checked = {}
    for dataset, size in sizes:
        if not isinstance(dataset, str) or not dataset:
            raise invalid(f"dataset names must be non-empty strings, got {dataset!r}", "chunk_sizes")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1000:
            raise invalid(f"must be an integer in 1..1000, got {size!r}", "chunk_sizes", dataset)
        checked[dataset] = size
    return tuple(sorted(checked.items()))


class LearnerConfig(CodeConfig):
    """Checked whole when built: a bad value, or values that do not fit together, stop the command at start."""

    config_name = "learner"

    first_round_episodes: AtLeastOne = 2  # demonstrations before the first version
    round_episodes: AtLeastOne = 5  # new finished episodes between versions
    train_steps: AtLeastOne = 1500  # gradient steps per version (SAC: updates per round)
    batch_size: AtLeastOne = 256
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3  # hg-dagger's (SAC has its own in ``sac``)
    # hg-dagger: each round continues the last round's policy and optimizer (a fresh one only when the architecture
    # changes); off: every round trains a fresh policy. fresh_start: the first round of this process starts afresh
    # instead of continuing the checkpoint's weights (an operator's reset).
    warm_start: bool = True
    fresh_start: bool = False
    # hg-dagger with warm starts: while no round is due, keep training on the last round's data (up to train_steps
    # per version); the round then trains only the rest, so a version follows its episodes quickly
    train_between: bool = True
    # the synchronous schedule, to compare with the asynchronous loop: the robots stop after each round's episodes
    # and wait for the next version, so every round publishes (new labelled steps or not; the same data trained
    # further) and nothing trains between rounds
    synchronous: bool = False
    poll_s: Annotated[float, Field(gt=0)] = 1.0
    hidden: Items[AtLeastOne] = (256, 256)  # the policy's (SAC: the actor's) hidden layers
    algorithm: Algorithm = "hg-dagger"
    staleness_budget: int | None = None  # versions; None: no budget (see cloud.learning.staleness)
    staleness_mode: StalenessMode = "drop"
    staleness_decay: StalenessDecay = "exp"  # downweight's decay: exp (budget = half-life) | linear
    staleness_interventions: bool = False  # interventions age too (demonstrations never do)
    sampler: SamplerConfig = SamplerConfig()
    sac: SACConfig = SACConfig()
    seed: int = 0
    # dataset -> actions per prediction (hg-dagger); a mapping is accepted and stored as sorted pairs
    chunk_sizes: Items[tuple[str, int]] = (("phone", 10),)
    # dataset -> (policy type, JSON of its config fields): "mlp", "cnn" or a lerobot type; unnamed datasets: auto
    policies: Items[tuple[str, str, str]] = ()
    # dataset -> where its rounds start (cloud.learning.init_weights): a pretrained_model folder, a weights file,
    # "registry" or "registry:vN"; a mapping is accepted and stored as sorted pairs
    init: Items[tuple[str, str]] = ()
    # dataset -> LoRA rank: its rounds train only adapters of that rank around its ``init`` policy (frozen), so the
    # versions after the first are deltas of the adapters; a mapping is accepted and stored as sorted pairs
    adapters: Items[tuple[str, int]] = ()
    # datasets whose reward classifier the learner trains on their labelled frames and publishes as <dataset>.reward
    reward_classifiers: Items[str] = ()
    reward: RewardTraining = RewardTraining()
    # Training data beyond memory (cloud.learning.step_index, cloud.learning.streaming): a column over
    # large_row_bytes per row, or an encoded camera, is not held but fetched per batch through a cache of at most
    # cache_bytes, decoded in loader_workers processes (0: in the learner's thread)
    large_row_bytes: AtLeastOne = 4096
    cache_bytes: Annotated[int, Field(ge=1 << 20)] = 256 << 20
    loader_workers: Annotated[int, Field(ge=0, le=16)] = 1
    # where rank 0 logs its curves (cloud.learning.curves, cloud.learning.tracking): runs under <data root>/runs/
    track: Literal["tensorboard", "wandb", "trackio", "none"] = "tensorboard"

    @model_validator(mode="before")
    @classmethod
    def _pairs_from_mappings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "chunk_sizes" in data:
                data["chunk_sizes"] = _chunk_sizes(data["chunk_sizes"])
            if "policies" in data:
                data["policies"] = _policy_choices(data["policies"])
            if "init" in data:
                data["init"] = _init_sources(data["init"])
            if "adapters" in data:
                data["adapters"] = _adapter_ranks(data["adapters"])
        return data

    @model_validator(mode="after")
    def _parts_fit_together(self) -> LearnerConfig:
        try:
            _ = self.staleness
        except ConfigError as err:
            raise invalid(err.why, *(f"staleness_{part}" for part in err.where[:1])) from None
        _check_ratio_kinds(self.sampler, self.algorithm)  # at start, not as a failure every round
        _check_policy_choices(self.policies, self.algorithm)
        _check_init_sources(self.init, self.policies, self.algorithm)
        _check_adapters(self.adapters, self.init)
        _check_reward_datasets(self.reward_classifiers)
        return self

    def adapter_rank_for(self, dataset: str) -> int:
        """The LoRA rank of ``dataset``'s adapters; 0: its rounds train the whole policy."""
        return dict(self.adapters).get(dataset, 0)

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
