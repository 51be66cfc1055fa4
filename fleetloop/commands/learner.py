"""``fleetloop learner``: the learner alone against a cloud's data folder; its flags are shared with
``fleetloop cloud`` and ``fleetloop-learner``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fleetloop.commands.arg_types import add_model_root_arg, add_repeatable, add_root_arg, add_valued, use_model_roots
from fleetloop.commands.config_flags import LEARNER_FLAGS, flag_error
from fleetloop.commands.stopping import stop_on_signals
from fleetloop.logs import setup_logging

if TYPE_CHECKING:
    from cloud.data.layout import DataLayout
    from cloud.learning.config import LearnerConfig
    from cloud.learning.curves import LearningCurves

log = logging.getLogger("fleetloop")


def _sample_ratios(text: str) -> tuple[str, str]:
    """``[DATASET:]GROUP=RATIO,...`` -> (dataset or "", the ratios' text); the sampler config checks them."""
    dataset, sep, spec = text.rpartition(":")
    return (dataset if sep else "", spec)


def _dataset_int(what: str, example: str) -> Callable[[str], tuple[str, int]]:
    """A parser of ``DATASET=N`` flags -> (dataset, N) naming ``what`` N is; the learner config checks N."""

    def parse(text: str) -> tuple[str, int]:
        dataset, sep, number = text.partition("=")
        if not sep or not dataset.strip():
            raise argparse.ArgumentTypeError(f"{text!r} is not DATASET=N (e.g. {example})")
        try:
            return dataset.strip(), int(number)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{dataset}: {what} must be an integer, got {number!r}") from err

    return parse


_chunk_size = _dataset_int("chunk size", "phone=10")
_adapter_rank = _dataset_int("the adapters' rank", "panda_pick_cube=8")


def _dataset_value(text: str, what: str) -> tuple[str, str]:
    dataset, sep, value = text.partition("=")
    if not sep or not dataset.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not DATASET={what}")
    return dataset.strip(), value.strip()


def _policy_type(text: str) -> tuple[str, str]:
    return _dataset_value(text, "TYPE (mlp, cnn, act, diffusion, smolvla...)")


def _init_source(text: str) -> tuple[str, str]:
    return _dataset_value(text, "SOURCE (a pretrained_model folder, a weights file or 'registry')")


def _policy_config(text: str) -> tuple[str, dict]:
    """``DATASET=FILE.json`` -> (dataset, the file's fields); the file must hold a JSON object."""
    dataset, path = _dataset_value(text, "FILE.json")
    try:
        fields = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise argparse.ArgumentTypeError(f"{dataset}: cannot read the policy config {path}: {err}") from err
    if not isinstance(fields, dict):
        raise argparse.ArgumentTypeError(f"{dataset}: {path} must hold a JSON object of config fields")
    return dataset, fields


def _add_round_args(parser: argparse.ArgumentParser) -> None:
    add_valued(parser, "--first-round-episodes", int, 2, "demonstrations to wait for before the first version")
    add_valued(parser, "--round-episodes", int, 5, "new finished episodes between versions")
    add_valued(parser, "--train-steps", int, 1500, "gradient steps per version")
    add_valued(parser, "--batch-size", int, 256, "steps per gradient step")
    parser.add_argument(
        "--algorithm",
        choices=["hg-dagger", "sac"],
        default="hg-dagger",
        help="hg-dagger: imitate the operator's corrections; sac: RL with interventions (HIL-SERL style)",
    )
    add_valued(parser, "--learner-seed", int, 0, "seed of the learner's batches (rank adds to it)")
    parser.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="hg-dagger: train every version from a fresh policy instead of continuing the last one",
    )
    parser.add_argument(
        "--no-train-between",
        dest="train_between",
        action="store_false",
        help="hg-dagger: train only in rounds, not on the last round's data while waiting for the next episodes",
    )
    parser.add_argument(
        "--synchronous",
        action="store_true",
        help="the synchronous schedule, to compare with the asynchronous default: robots run with "
        "--episodes-per-version and wait for each version, so every round publishes and nothing trains between",
    )
    parser.add_argument(
        "--fresh-start",
        action="store_true",
        help="start the first version of this run from a fresh policy instead of the checkpoint's weights",
    )
    parser.add_argument(
        "--track",
        choices=["tensorboard", "wandb", "trackio", "none"],
        default="tensorboard",
        help="where the learner logs losses, throughput, staleness and each version's success and intervention rate: "
        "TensorBoard event files in <root>/runs/<policy>/ (default), a W&B run (offline without a login), trackio",
    )


def _add_policy_args(parser: argparse.ArgumentParser) -> None:
    add_repeatable(
        parser,
        "--chunk-size",
        "DATASET=N",
        "hg-dagger: that dataset's policy predicts N actions at once (default phone=10: the foresight trajectory)",
        _chunk_size,
    )
    add_repeatable(
        parser,
        "--policy",
        "DATASET=TYPE",
        "the policy trained for a dataset: mlp, cnn or a lerobot type (act, diffusion, smolvla...); "
        "default mlp, or cnn with images",
        _policy_type,
    )
    add_repeatable(
        parser,
        "--policy-config",
        "DATASET=FILE.json",
        "that policy's config fields (for lerobot: its PreTrainedConfig fields, e.g. chunk_size)",
        _policy_config,
    )
    add_repeatable(
        parser,
        "--init",
        "DATASET=SOURCE",
        "hg-dagger: that dataset's rounds fine-tune this policy (and keep its normalization) instead of random "
        "weights: a lerobot pretrained_model folder, a fleetloop weights file, 'registry' (the newest version "
        "`fleetloop policy publish` put there) or 'registry:vN'",
        _init_source,
    )
    add_repeatable(
        parser,
        "--adapters",
        "DATASET=RANK",
        "hg-dagger: train only LoRA adapters of this rank around the --init policy of that dataset (its weights "
        "stay frozen), so each version after the first reaches the robots as a delta of the adapters",
        _adapter_rank,
    )
    add_repeatable(
        parser,
        "--reward-classifier",
        "DATASET",
        "also train lerobot's reward classifier on that dataset's camera frames (the last steps of successful "
        "episodes against failed ones and early steps) and publish it as the policy DATASET.reward",
    )


def _add_staleness_args(parser: argparse.ArgumentParser) -> None:
    add_valued(
        parser,
        "--staleness-budget",
        int,
        None,
        "versions an on-policy step may lag the learner (drop: kept while age <= N; downweight: half-life N)",
        metavar="N",
    )
    parser.add_argument("--staleness-mode", choices=["drop", "downweight"], default="drop")
    parser.add_argument(
        "--staleness-decay", choices=["exp", "linear"], default="exp", help="how downweight decays (default exp)"
    )
    parser.add_argument("--staleness-interventions", action="store_true", help="let a person's corrections age too")


def _add_sampler_args(parser: argparse.ArgumentParser) -> None:
    add_valued(
        parser,
        "--foresight-tolerance-m",
        float,
        0.02,
        "phone demonstrations where the foresight was off by more than this (metres) are sampled more often",
    )
    add_valued(
        parser,
        "--foresight-max-weight",
        float,
        5.0,
        "at most this many times as often (1: sample phone demonstrations evenly)",
    )
    add_repeatable(
        parser,
        "--sample-ratios",
        "[DATASET:]GROUP=RATIO,...",
        "shares of each batch by kind of step (online, intervention, demo, offline; join kinds with +), "
        "e.g. online=0.5,intervention+demo=0.5; prefix DATASET: for one task",
        _sample_ratios,
    )
    add_repeatable(parser, "--offline-source", "SOURCE", "episodes from this source are imported offline data")


def _add_sac_args(parser: argparse.ArgumentParser) -> None:
    add_valued(
        parser,
        "--demo-ratio",
        float,
        0.5,
        "sac: share of each batch from the demonstration buffer (interventions, demos)",
    )
    parser.add_argument(
        "--sac-explore",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sac: robots sample actions from the published actor, as HIL-SERL collects (default); "
        "--no-sac-explore runs its mean action",
    )


def add_learner_args(parser: argparse.ArgumentParser) -> None:
    """The learner's flags, the same in ``fleetloop cloud``, ``fleetloop learner`` and ``fleetloop-learner``."""
    for add in (_add_round_args, _add_policy_args, _add_sampler_args, _add_staleness_args, _add_sac_args):
        add(parser)
    add_model_root_arg(parser)


def _policies(types: list[tuple[str, str]], configs: list[tuple[str, dict]]) -> dict[str, tuple[str, dict]]:
    """--policy and --policy-config -> {dataset: (type, fields)}; a config for a dataset without --policy is an
    error (its type would be a guess)."""
    chosen = dict(types)
    fields = dict(configs)
    for dataset in fields:
        if dataset not in chosen:
            raise ValueError(f"--policy-config {dataset}=...: name its policy type too (--policy {dataset}=TYPE)")
    return {dataset: (policy_type, fields.get(dataset, {})) for dataset, policy_type in chosen.items()}


def learner_config(args: argparse.Namespace) -> LearnerConfig:
    """The LearnerConfig of the parsed flags; ValueError naming the flag when flags do not fit together."""
    from cloud.learning.algorithms.sac_agent import SACConfig
    from cloud.learning.config import LearnerConfig
    from cloud.learning.sampler import SamplerConfig, parse_ratios
    from hal.config import ConfigError

    try:
        default_ratios = None
        per_dataset: dict[str, tuple] = {}
        for dataset, ratios in getattr(args, "sample_ratios", []):
            if not dataset:
                default_ratios = parse_ratios(ratios)
            else:
                per_dataset[dataset] = parse_ratios(ratios)
        config = LearnerConfig(
            first_round_episodes=args.first_round_episodes,
            round_episodes=args.round_episodes,
            train_steps=args.train_steps,
            batch_size=getattr(args, "batch_size", 256),
            chunk_sizes=(("phone", 10), *getattr(args, "chunk_size", [])),
            policies=_policies(getattr(args, "policy", []), getattr(args, "policy_config", [])),
            algorithm=getattr(args, "algorithm", "hg-dagger"),
            staleness_budget=getattr(args, "staleness_budget", None),
            staleness_mode=getattr(args, "staleness_mode", "drop"),
            staleness_decay=getattr(args, "staleness_decay", "exp"),
            staleness_interventions=getattr(args, "staleness_interventions", False),
            sampler=SamplerConfig(
                ratios=default_ratios,
                per_dataset=per_dataset,
                offline_sources=tuple(getattr(args, "offline_source", [])),
                foresight_tolerance_m=getattr(args, "foresight_tolerance_m", 0.02),
                foresight_max_weight=getattr(args, "foresight_max_weight", 5.0),
            ),
            sac=SACConfig(demo_ratio=getattr(args, "demo_ratio", 0.5), explore=getattr(args, "sac_explore", True)),
            seed=getattr(args, "learner_seed", 0),
            warm_start=getattr(args, "warm_start", True),
            fresh_start=getattr(args, "fresh_start", False),
            train_between=getattr(args, "train_between", True),
            synchronous=getattr(args, "synchronous", False),
            init=tuple(getattr(args, "init", [])),
            adapters=tuple(getattr(args, "adapters", [])),
            reward_classifiers=tuple(getattr(args, "reward_classifier", [])),
            track=getattr(args, "track", "tensorboard"),
        )
    except ConfigError as err:
        raise flag_error(err, LEARNER_FLAGS) from err
    from cloud.learning.tracking import check_backend

    check_backend(config.track)  # a missing package stops the command now, saying how to install it
    if config.init:
        from cloud.learning.init_weights import check_init

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a starting policy's config may name hub files: none is fetched
        check_init(config.init, args.root)
    return config


def run_learner(
    layout: DataLayout,
    config: LearnerConfig,
    stop: threading.Event | None = None,
    log_plain: bool = True,
    dist=None,
    on_step=None,
    max_rounds: int = 0,
) -> None:
    """The learner over the data folder ``layout`` until ``stop`` (or signals); ``dist``: torchrun's context."""
    setup_logging(plain=log_plain)
    import torch

    from cloud.data.learner_key import signing_registry
    from cloud.data.store_union import StoreUnion
    from cloud.learning.learner import Learner

    torch.set_num_threads(1)  # two cores are shared with the gateway and the robots
    stop = stop or stop_on_signals()
    store = StoreUnion(layout.store_at)  # every gateway's partition of the store
    registry = signing_registry(layout)  # every version it publishes carries the learner's signature
    curves = learning_curves(layout, config)
    learner = Learner(
        store, registry, config, checkpoint_dir=layout.learner_checkpoint, dist=dist, on_step=on_step, curves=curves
    )
    try:
        learner.run(stop, max_rounds=max_rounds)
    finally:
        learner.close()


def learning_curves(layout: DataLayout, config: LearnerConfig) -> LearningCurves | None:
    """Where the learner's curves go (``--track``): a run per policy under ``<root>/runs/``; None for ``none``."""
    from functools import partial

    from cloud.learning.curves import LearningCurves
    from cloud.learning.tracking import open_tracker

    if config.track == "none":
        return None
    settings = config.model_dump(mode="json")
    runs = layout.runs
    log.info("learning curves go to %s (%s)", runs, config.track)
    return LearningCurves(partial(open_tracker, config.track, runs, config=settings), runs)


def learner_process(layout: DataLayout, config: LearnerConfig) -> None:
    """The learner in a child process of ``fleetloop cloud`` (a module-level function: spawn pickles it)."""
    run_learner(layout, config)


def cmd_learner(args: argparse.Namespace) -> int:
    try:
        use_model_roots(args)
        config = learner_config(args)
    except ValueError as err:
        log.error("refusing to start: %s", err)
        return 2
    run_learner(args.root, config, log_plain=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    learner = sub.add_parser("learner", help="run the learner alone against a cloud's data folder")
    add_root_arg(learner, shared=True)
    add_learner_args(learner)
    learner.set_defaults(func=cmd_learner)
