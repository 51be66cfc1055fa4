"""Config field paths and the flags that set them: a ``ConfigError`` about a field becomes an error that names
the flag, so the command says which flag to fix."""

from __future__ import annotations

from collections.abc import Mapping

from hal.config import ConfigError

# Each gateway, phone and openpi channel config field a flag of `fleetloop cloud` sets, and that flag (``flag_error``).
CLOUD_FLAGS = {
    "gateway.host": "--host",
    "gateway.port": "--port",
    "gateway.max_batch_bytes": "--max-batch-mb",
    "gateway.lost_after_s": "--lost-after",
    "gateway.wire_dtype": "--wire-dtype",
    "gateway.store_codec": "--store-codec",
    "gateway.canary": "--canary",
    "gateway.canary_episodes": "--canary-episodes",
    "gateway.canary_max_episodes": "--canary-max-episodes",
    "gateway.inference_threads": "--inference-threads",
    "phone.host": "--host",
    "phone.port": "--phone-port",
    "phone.image_height": "--phone-image",
    "phone.image_width": "--phone-image",
    "phone.public_host": "--phone-url-host",
    "phone.pairing_ttl_s": "--pairing-minutes",
    "openpi.host": "--host",
    "openpi.port": "--openpi-port",
    "openpi.default_policy": "--openpi-policy",
}

# Each edge and tunnel config field a flag of `fleetloop edge` sets, and that flag (``flag_error``).
EDGE_FLAGS = {
    "tunnel.target": "--cloud",
    "tunnel.policy_name": "--policy",
    "tunnel.token": "--token-file",
    "tunnel.ca": "--ca",
    "tunnel.outcome_policy": "--outcome-from",
    "tunnel.uplink_codec": "--uplink-codec",
    "outcome.threshold": "--outcome-threshold",
    "outcome.consecutive": "--outcome-ticks",
    "edge.hold_on_link_loss_s": "--hold-on-link-loss",
    "edge.max_spool_bytes": "--spool-max-mb",
    "edge.episodes_per_version": "--episodes-per-version",
}

# Each config field a learner flag sets, and that flag: errors in the field name the flag (``flag_error``).
# SamplerConfig and SACConfig are built on their own first, so their fields appear under their own names too.
LEARNER_FLAGS = {
    "learner.first_round_episodes": "--first-round-episodes",
    "learner.round_episodes": "--round-episodes",
    "learner.train_steps": "--train-steps",
    "learner.batch_size": "--batch-size",
    "learner.algorithm": "--algorithm",
    "learner.seed": "--learner-seed",
    "learner.warm_start": "--no-warm-start",
    "learner.fresh_start": "--fresh-start",
    "learner.train_between": "--no-train-between",
    "learner.synchronous": "--synchronous",
    "learner.track": "--track",
    "learner.chunk_sizes": "--chunk-size",
    "learner.policies": "--policy",
    "learner.init": "--init",
    "learner.adapters": "--adapters",
    "learner.reward_classifiers": "--reward-classifier",
    "learner.staleness_budget": "--staleness-budget",
    "learner.staleness_mode": "--staleness-mode",
    "learner.staleness_decay": "--staleness-decay",
    "learner.staleness_interventions": "--staleness-interventions",
    "learner.sampler.ratios": "--sample-ratios",
    "learner.sampler.per_dataset": "--sample-ratios",
    "sampler.ratios": "--sample-ratios",
    "sampler.per_dataset": "--sample-ratios",
    "sampler.offline_sources": "--offline-source",
    "sampler.foresight_tolerance_m": "--foresight-tolerance-m",
    "sampler.foresight_max_weight": "--foresight-max-weight",
    "sac.demo_ratio": "--demo-ratio",
    "sac.explore": "--sac-explore",
}

# Each demo config field a flag sets, and that flag (``flag_error``).
DEMO_FLAGS = {
    "demo.robots": "--robots",
    "demo.minutes": "--minutes",
    "demo.control_hz": "--hz",
    "demo.seed": "--seed",
    "demo.target_success": "--target",
    "demo.task": "--task",
    "demo.schedule": "--schedule",
    "demo.round_episodes": "--round-episodes",
}


def flag_error(err: ConfigError, flags: Mapping[str, str]) -> ValueError:
    """``err`` prefixed with the flag of its field (``flags``: field path -> flag, the longest path that holds the
    error's field wins); ``err`` itself when no flag sets that field."""
    covering = [path for path in flags if _within(err.path, path)]
    if not covering:
        return err
    return ValueError(f"{flags[max(covering, key=len)]}: {err}")


def _within(path: str, field: str) -> bool:
    """Whether ``path`` is ``field`` or below it (``sampler.ratios.online`` is below ``sampler.ratios``)."""
    return path == field or (path.startswith(field) and path[len(field)] in ".[")
