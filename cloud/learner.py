"""The learner: HG-DAgger over the episode store, publishing policy versions to the registry.

HG-DAgger trains only on actions a person chose: the operator's corrections and full
demonstrations (every step with the intervention flag). Autonomous steps carry no label.
A round starts once enough new episodes have ended since the last version; each round
trains a fresh policy on every labelled step so far, then publishes it.

After each publish the learner saves a checkpoint per dataset under ``checkpoint_dir`` (by default
``<data root>/learner/checkpoint/<dataset>/``): the weights and the optimizer's tensors as safetensors, and the
scalars (version, gradient steps so far, episodes at that version, optimizer hyperparameters) as JSON, which is
written last by rename and names the tensor file, so a checkpoint is whole or absent. A restarted learner
loads it (a local file only: never bytes from the wire, never pickle) and carries on from that version and
step, so it neither retrains at once nor waits a whole round longer than it should. When the registry holds
a newer version than the checkpoint (the learner died between publishing and saving), the registry wins.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from cloud.registry import PolicyRegistry, PolicyVersion
from cloud.store import EpisodeStore
from policies.base import Policy
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
    total_steps: int = 0  # gradient steps over every version of this dataset
    policy: Policy | None = None  # the last published policy (restored from the checkpoint after a restart)
    optimizer: torch.optim.Optimizer | None = None


@dataclass
class Checkpoint:
    version: int
    total_steps: int
    episodes_at_version: int
    policy: Policy
    optimizer: torch.optim.Optimizer


class LearnerCheckpoint:
    """Saves and loads one dataset's learner state in ``directory`` (see the module docstring)."""

    META = "checkpoint.json"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def save(
        self,
        version: int,
        total_steps: int,
        episodes_at_version: int,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        state = optimizer.state_dict()
        tensors = {f"policy.{k}": v.detach().contiguous() for k, v in policy.state_dict().items()}
        scalars: dict[str, dict[str, Any]] = {}
        for index, param_state in state["state"].items():
            for key, value in param_state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        tensor_file = f"state-v{version:06d}.safetensors"
        _write_durably(self.directory / tensor_file, safetensors.torch.save(tensors))
        meta = {
            "version": version,
            "total_steps": total_steps,
            "episodes_at_version": episodes_at_version,
            "tensors": tensor_file,
            "policy_type": policy.type_name,
            "policy_config": policy.config_dict(),
            "optimizer_type": type(optimizer).__name__,
            "optimizer_param_groups": state["param_groups"],
            "optimizer_scalars": scalars,
        }
        _write_durably(self.directory / self.META, json.dumps(meta).encode())  # the commit point
        for old in self.directory.glob("state-v*.safetensors"):
            if old.name != tensor_file:
                old.unlink(missing_ok=True)

    def load(self) -> Checkpoint | None:
        """The saved state, or None when there is none; ValueError when it is there but does not fit."""
        try:
            meta = json.loads((self.directory / self.META).read_bytes())
        except FileNotFoundError:
            return None
        tensors = safetensors.torch.load_file(self.directory / meta["tensors"])  # a local file, never wire bytes
        policy = make_policy(meta["policy_type"], meta["policy_config"])
        prefix = "policy."
        policy.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        if meta["optimizer_type"] != "AdamW":
            raise ValueError(f"checkpoint optimizer {meta['optimizer_type']!r}: only AdamW is known")
        optimizer = torch.optim.AdamW(policy.parameters())
        state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = value
        for index, values in meta["optimizer_scalars"].items():
            state.setdefault(int(index), {}).update(values)
        groups = meta["optimizer_param_groups"]
        for group in groups:
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        return Checkpoint(meta["version"], meta["total_steps"], meta["episodes_at_version"], policy, optimizer)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    def __init__(
        self,
        store: EpisodeStore,
        registry: PolicyRegistry,
        config: LearnerConfig = LearnerConfig(),
        checkpoint_dir: str | Path | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._datasets: dict[str, _DatasetState] = {}

    def _checkpoint(self, dataset: str) -> LearnerCheckpoint | None:
        return LearnerCheckpoint(self.checkpoint_dir / dataset) if self.checkpoint_dir is not None else None

    def _resume(self, dataset: str, state: _DatasetState, finished: int) -> None:
        """Where a (re)started learner carries on: its checkpoint, else the registry's latest version."""
        latest = self.registry.latest(dataset)
        checkpoint = self._checkpoint(dataset)
        try:
            saved = checkpoint.load() if checkpoint is not None else None
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            log.error("ignoring the learner checkpoint of %s: %s", dataset, err)
            saved = None
        if saved is not None and latest is not None and saved.version == latest.version:
            state.episodes_at_last_version = saved.episodes_at_version
            state.total_steps = saved.total_steps
            state.policy, state.optimizer = saved.policy, saved.optimizer
            log.info("resuming from checkpoint: v%d, step %d (%s)", saved.version, saved.total_steps, dataset)
            return
        if saved is not None:
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

    def poll_once(self) -> list[PolicyVersion]:
        """Trains and publishes a version for every dataset that has enough new episodes."""
        self.store.refresh()
        published = []
        for dataset in self.store.datasets():
            state = self._datasets.setdefault(dataset, _DatasetState())
            finished = sum(1 for e in self.store.episodes(dataset) if e.done)
            if state.episodes_at_last_version < 0:
                self._resume(dataset, state, finished)
            needed = self.config.round_episodes if self.registry.latest(dataset) else self.config.first_round_episodes
            if finished - state.episodes_at_last_version < needed:
                continue
            version = self.train_and_publish(dataset, finished, state)
            if version is not None:
                state.episodes_at_last_version = finished
                state.versions.append(version)
                published.append(version)
                checkpoint = self._checkpoint(dataset)
                if checkpoint is not None and state.policy is not None and state.optimizer is not None:
                    checkpoint.save(version.version, state.total_steps, finished, state.policy, state.optimizer)
        return published

    def train_and_publish(
        self, dataset: str, finished_episodes: int, state: _DatasetState | None = None
    ) -> PolicyVersion | None:
        schema = self.store.schema(dataset)
        names = [n for n in schema if n.startswith("obs.")] + ["action", "intervention"]
        data = self.store.read(dataset, columns=names)
        labelled = data["intervention"].astype(bool)
        if labelled.sum() < 2:
            return None
        training = {name: values[labelled] for name, values in data.items() if name != "intervention"}
        started = time.perf_counter()
        policy = policy_for_schema(schema, self.config.hidden)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=self.config.learning_rate)
        loss = train_policy(
            policy,
            training,
            steps=self.config.train_steps,
            batch_size=self.config.batch_size,
            lr=self.config.learning_rate,
            optimizer=optimizer,
        )
        weights = policy_to_bytes(policy)
        version = self.registry.publish(
            dataset, weights, note=f"hg-dagger on {int(labelled.sum())} labelled steps, {finished_episodes} episodes"
        )
        if state is not None:
            state.total_steps += self.config.train_steps
            state.policy, state.optimizer = policy, optimizer
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
