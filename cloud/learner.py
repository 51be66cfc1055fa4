"""The learner: HG-DAgger over the episode store, publishing policy versions to the registry.

HG-DAgger trains only on actions a person chose: the operator's corrections and full
demonstrations (every step with the intervention flag). Autonomous steps carry no label.
A round starts once enough new episodes have ended since the last version; each round
trains a fresh policy on every labelled step so far, then publishes it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from cloud.registry import PolicyRegistry, PolicyVersion
from cloud.store import EpisodeStore
from policies.registry import make_policy
from policies.train import train_policy
from policies.weights import policy_to_bytes

log = logging.getLogger("fleetloop.learner")


@dataclass(frozen=True)
class LearnerConfig:
    first_round_episodes: int = 2  # demonstrations before the first version
    round_episodes: int = 5  # new finished episodes between versions
    train_steps: int = 1500
    batch_size: int = 256
    learning_rate: float = 1e-3
    poll_s: float = 1.0
    hidden: tuple[int, ...] = (256, 256)

    def __post_init__(self) -> None:
        for name in ("first_round_episodes", "round_episodes", "train_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"learner.{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learner.learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class _DatasetState:
    episodes_at_last_version: int = -1
    versions: list[PolicyVersion] = field(default_factory=list)


def policy_for_schema(schema: dict, hidden: tuple[int, ...]):
    """An MLP for vector observations, a small CNN when any observation is a uint8 image."""
    observation = {
        name.removeprefix("obs."): {"shape": list(spec.shape), "dtype": np.dtype(spec.dtype).name}
        for name, spec in schema.items()
        if name.startswith("obs.")
    }
    has_image = any(o["dtype"] == "uint8" and len(o["shape"]) == 3 for o in observation.values())
    config = {"observation": observation, "action_dim": int(np.prod(schema["action"].shape)), "chunk_size": 1}
    if not has_image:
        config["hidden"] = list(hidden)
    return make_policy("cnn" if has_image else "mlp", config)


class HGDaggerLearner:
    def __init__(self, store: EpisodeStore, registry: PolicyRegistry, config: LearnerConfig = LearnerConfig()) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self._datasets: dict[str, _DatasetState] = {}

    def poll_once(self) -> list[PolicyVersion]:
        """Trains and publishes a version for every dataset that has enough new episodes."""
        self.store.refresh()
        published = []
        for dataset in self.store.datasets():
            state = self._datasets.setdefault(dataset, _DatasetState())
            finished = sum(1 for e in self.store.episodes(dataset) if e.done)
            if state.episodes_at_last_version < 0:
                latest = self.registry.latest(dataset)
                # After a restart, carry on from the published version instead of retraining at once.
                state.episodes_at_last_version = finished if latest else 0
                if latest is not None:
                    log.info("resuming %s from the published v%d", dataset, latest.version)
            needed = self.config.round_episodes if self.registry.latest(dataset) else self.config.first_round_episodes
            if finished - state.episodes_at_last_version < needed:
                continue
            version = self.train_and_publish(dataset, finished)
            if version is not None:
                state.episodes_at_last_version = finished
                state.versions.append(version)
                published.append(version)
        return published

    def train_and_publish(self, dataset: str, finished_episodes: int) -> PolicyVersion | None:
        schema = self.store.schema(dataset)
        names = [n for n in schema if n.startswith("obs.")] + ["action", "intervention"]
        data = self.store.read(dataset, columns=names)
        labelled = data["intervention"].astype(bool)
        if labelled.sum() < 2:
            return None
        training = {name: values[labelled] for name, values in data.items() if name != "intervention"}
        started = time.perf_counter()
        policy = policy_for_schema(schema, self.config.hidden)
        loss = train_policy(
            policy,
            training,
            steps=self.config.train_steps,
            batch_size=self.config.batch_size,
            lr=self.config.learning_rate,
        )
        weights = policy_to_bytes(policy)
        version = self.registry.publish(
            dataset, weights, note=f"hg-dagger on {int(labelled.sum())} labelled steps, {finished_episodes} episodes"
        )
        log.info(
            "published %s v%d: trained on %d operator-labelled steps from %d finished episodes in %.1f s (loss %.4f)",
            dataset,
            version.version,
            int(labelled.sum()),
            finished_episodes,
            time.perf_counter() - started,
            loss,
        )
        return version

    def run(self, stop: threading.Event) -> None:
        log.info("learner watching %s", self.store.root)
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("learner round failed; retrying at the next poll")
            stop.wait(self.config.poll_s)
