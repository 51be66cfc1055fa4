"""The learner: HG-DAgger or SAC with interventions over the episode store, publishing policy versions.

``LearnerConfig.algorithm`` picks how a round trains; everything else (when a round starts, publishing, the
checkpoint, running under torchrun) is shared.

- ``hg-dagger`` trains only on actions a person chose: the operator's corrections and full demonstrations (every
  step with the intervention flag, plus imported offline data). Autonomous steps carry no label. Each round trains
  a fresh policy on every labelled step so far, then publishes it. A dataset named in ``chunk_sizes`` gets a policy
  that predicts that many actions at once (targets: the step's action and the episode's next ones): the ``phone``
  policy predicts 10, the trajectory a phone's foresight overlay draws. ``policies`` picks the architecture per
  dataset: by default an MLP for vector observations and a small CNN with images, or any lerobot policy type
  (``act``, ``diffusion``, ``smolvla``...) with its config fields, trained with lerobot's own loss on action
  sequences cut from each step's episode (``action_is_pad`` past its ends) and published like any other.
- ``sac`` (HIL-SERL / RLPD style, ``cloud.learning.sac``): the actor, twin critics and temperature carry on from round
  to round; each round takes ``train_steps`` updates on batches that mix the online buffer (what the policy did) and the
  demonstration buffer (what a person did) at ``sac.demo_ratio`` (default 50/50), and publishes the actor.

A round starts once enough new episodes have ended since the last version. Its batches come from
``cloud.learning.sampler`` (explicit ratios between kinds of data, per dataset) with ``cloud.learning.staleness``'
weights: with ``staleness_budget`` set, on-policy steps recorded ``age`` versions before the learner's latest are
dropped or down-weighted; steps a person labelled are exempt unless ``staleness_interventions``.

After each publish the learner saves a checkpoint per dataset under ``checkpoint_dir`` (by default
``<data root>/learner/checkpoint/<dataset>/``): the weights and the optimizer's tensors as safetensors (for SAC also
the critics, their targets, the temperature and their optimizers), and the scalars (version, gradient steps so far,
episodes at that version, optimizer hyperparameters) as JSON, which is
written last by rename and names the tensor file, so a checkpoint is whole or absent. A restarted learner
loads it (a local file only: never bytes from the wire, never pickle) and carries on from that version and
step, so it neither retrains at once nor waits a whole round longer than it should. When the registry holds
a newer version than the checkpoint (the learner died between publishing and saving), the registry wins.

Under ``torchrun`` (``cloud.learning.distributed``) every rank runs this loop: rank 0 decides each round and broadcasts
it, every rank trains on the same rows with its own batches under DistributedDataParallel, rank 0 publishes and saves.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from cloud.data.files import write_atomically
from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry, PolicyVersion
from cloud.learning.distributed import DistContext
from cloud.learning.sac import SACAgent, SACConfig, known_action_limits
from cloud.learning.sampler import KINDS, LABELLED_KINDS, Sampler, SamplerConfig, StepTable, load_steps
from cloud.learning.staleness import StalenessBudget
from policies.base import Policy
from policies.factory import make_policy
from policies.lerobot_policy import LerobotPolicy, check_lerobot_config
from policies.sac_actor import SACActorPolicy
from policies.train import train_policy
from policies.weights import policy_to_bytes

log = logging.getLogger("fleetloop.learner")

ALGORITHMS = ("hg-dagger", "sac")
# on_step(dataset, step within the round, the modules being trained): e.g. cloud.learning.distributed's parameter trace.
StepHook = Callable[[str, int, dict[str, nn.Module]], None]


BUILTIN_POLICY_TYPES = ("auto", "mlp", "cnn")


def _check_policies(policies, algorithm: str) -> tuple[tuple[str, str, str], ...]:
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
        sizes = self.chunk_sizes.items() if isinstance(self.chunk_sizes, dict) else self.chunk_sizes
        checked = {}
        for dataset, size in sizes:
            if not isinstance(dataset, str) or not dataset:
                raise ValueError(f"learner.chunk_sizes: dataset names must be non-empty strings, got {dataset!r}")
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1000:
                raise ValueError(f"learner.chunk_sizes.{dataset} must be an integer in 1..1000, got {size!r}")
            checked[dataset] = size
        object.__setattr__(self, "chunk_sizes", tuple(sorted(checked.items())))
        object.__setattr__(self, "policies", _check_policies(self.policies, self.algorithm))

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


@dataclass
class _DatasetState:
    episodes_at_last_version: int = -1
    versions: list[PolicyVersion] = field(default_factory=list)
    total_steps: int = 0  # gradient steps over every version of this dataset
    policy: Policy | None = None  # the last published policy (restored from the checkpoint after a restart)
    optimizer: torch.optim.Optimizer | None = None
    agent: SACAgent | None = None  # SAC's whole state (its actor is ``policy``)
    rounds: int = 0  # rounds trained by this process


@dataclass
class Checkpoint:
    version: int
    total_steps: int
    episodes_at_version: int
    policy: Policy
    optimizer: torch.optim.Optimizer
    algorithm: str = "hg-dagger"
    module_states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # SAC: critics, temperature
    optimizer_states: dict[str, dict[str, Any]] = field(default_factory=dict)


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"type": type(optimizer).__name__, "param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    if meta["type"] != "AdamW":
        raise ValueError(f"checkpoint optimizer {meta['type']!r}: only AdamW is known")
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


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
        algorithm: str = "hg-dagger",
        modules: dict[str, nn.Module] | None = None,
        optimizers: dict[str, torch.optim.Optimizer] | None = None,
    ) -> None:
        """``modules``/``optimizers``: further state by name (SAC's critics, temperature and their optimizers)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"policy.{k}": v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
        optimizer_tensors, optimizer_meta = _optimizer_tensors("optimizer.", optimizer)
        tensors.update(optimizer_tensors)
        for name, module in (modules or {}).items():
            tensors.update(
                {f"modules.{name}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            )
        extra_optimizers = {}
        for name, extra in (optimizers or {}).items():
            extra_tensors, extra_optimizers[name] = _optimizer_tensors(f"optimizers.{name}.", extra)
            tensors.update(extra_tensors)
        tensor_file = f"state-v{version:06d}.safetensors"
        write_atomically(self.directory / tensor_file, safetensors.torch.save(tensors))
        meta = {
            "version": version,
            "total_steps": total_steps,
            "episodes_at_version": episodes_at_version,
            "algorithm": algorithm,
            "tensors": tensor_file,
            "policy_type": policy.type_name,
            "policy_config": policy.config_dict(),
            "optimizer_type": optimizer_meta["type"],
            "optimizer_param_groups": optimizer_meta["param_groups"],
            "optimizer_scalars": optimizer_meta["scalars"],
            "modules": sorted(modules or {}),
            "optimizers": extra_optimizers,
        }
        write_atomically(self.directory / self.META, json.dumps(meta).encode())  # the commit point
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
        optimizer = torch.optim.AdamW(policy.parameters())
        main = {"type": meta["optimizer_type"], "param_groups": meta["optimizer_param_groups"]}
        optimizer.load_state_dict(
            _optimizer_state("optimizer.", tensors, {**main, "scalars": meta["optimizer_scalars"]})
        )
        module_states = {}
        for name in meta.get("modules", []):
            head = f"modules.{name}."
            module_states[name] = {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}
        optimizer_states = {
            name: _optimizer_state(f"optimizers.{name}.", tensors, extra)
            for name, extra in meta.get("optimizers", {}).items()
        }
        return Checkpoint(
            meta["version"],
            meta["total_steps"],
            meta["episodes_at_version"],
            policy,
            optimizer,
            meta.get("algorithm", "hg-dagger"),
            module_states,
            optimizer_states,
        )


def _observation_spec(schema: dict) -> dict[str, dict[str, Any]]:
    return {
        name.removeprefix("obs."): {"shape": list(spec.shape), "dtype": np.dtype(spec.dtype).name}
        for name, spec in schema.items()
        if name.startswith("obs.")
    }


def policy_for_schema(
    schema: dict, hidden: tuple[int, ...], chunk_size: int = 1, policy_type: str = "auto", fields: dict | None = None
) -> Policy:
    """``auto``: an MLP for vector observations, a small CNN when any observation is a uint8 image; ``mlp`` or
    ``cnn``; else a lerobot policy of that type with ``fields`` for its config (random weights; without images
    the observations go in as lerobot's ``observation.state`` and ``observation.environment_state``)."""
    observation = _observation_spec(schema)
    action_dim = int(np.prod(schema["action"].shape))
    has_image = any(o["dtype"] == "uint8" and len(o["shape"]) == 3 for o in observation.values())
    if policy_type not in BUILTIN_POLICY_TYPES:
        # lerobot's vision policies need an image or an environment state (and ACT's VAE a robot state): a robot
        # without cameras feeds its vectors as both.
        names = sorted(observation)
        inputs = None if has_image else {"observation.state": names, "observation.environment_state": names}
        return LerobotPolicy(observation, action_dim, policy_type, fields or {}, inputs=inputs)
    policy_type = ("cnn" if has_image else "mlp") if policy_type == "auto" else policy_type
    config = {"observation": observation, "action_dim": action_dim, "chunk_size": chunk_size, **(fields or {})}
    if policy_type == "mlp":
        config.setdefault("hidden", list(hidden))
    return make_policy(policy_type, config)


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
        config: LearnerConfig = LearnerConfig(),
        checkpoint_dir: str | Path | None = None,
        dist: DistContext | None = None,
        on_step: StepHook | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.dist = dist or DistContext()
        self.on_step = on_step
        self._datasets: dict[str, _DatasetState] = {}

    def _checkpoint(self, dataset: str) -> LearnerCheckpoint | None:
        return LearnerCheckpoint(self.checkpoint_dir / dataset) if self.checkpoint_dir is not None else None

    def _resume(self, dataset: str, state: _DatasetState, finished: int) -> None:
        """Where a (re)started learner carries on: its checkpoint, else the registry's latest version."""
        latest = self.registry.latest(dataset)
        checkpoint = self._checkpoint(dataset)
        try:
            saved = checkpoint.load() if checkpoint is not None else None
            if saved is not None and saved.algorithm != self.config.algorithm:
                raise ValueError(f"it was saved by {saved.algorithm}, this learner runs {self.config.algorithm}")
            agent = self._restore_agent(saved) if saved is not None and saved.algorithm == "sac" else None
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            log.error("ignoring the learner checkpoint of %s: %s", dataset, err)
            saved, agent = None, None
        if saved is not None and latest is not None and saved.version == latest.version:
            state.episodes_at_last_version = saved.episodes_at_version
            state.total_steps = saved.total_steps
            state.policy, state.optimizer, state.agent = saved.policy, saved.optimizer, agent
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

    def _restore_agent(self, saved: Checkpoint) -> SACAgent:
        if not isinstance(saved.policy, SACActorPolicy):
            raise ValueError(f"a sac checkpoint holds a {saved.policy.type_name!r} policy")
        saved.policy.to(self.dist.device)
        agent = self._new_agent(saved.policy)
        for name, module in agent.modules().items():
            module.load_state_dict(saved.module_states[name], strict=True)
        for name, optimizer in agent.optimizers().items():
            optimizer.load_state_dict(saved.optimizer_states[name])
        agent.actor_optimizer = saved.optimizer
        return agent

    def _new_agent(self, actor: SACActorPolicy) -> SACAgent:
        agent = SACAgent(actor, self.config.sac, wrap=self.dist.wrap if self.dist.distributed else None)
        for module in [agent.actor, *agent.modules().values()]:
            module.to(self.dist.device)
            self.dist.broadcast_module_(module)  # every rank starts from rank 0's networks, targets included
        agent.all_reduce_mean = self.dist.all_reduce_mean if self.dist.distributed else None
        return agent

    def _plan(self) -> list[_Round]:
        """Rank 0: the datasets with enough new episodes for a round."""
        self.store.refresh()
        plan = []
        for dataset in self.store.datasets():
            state = self._datasets.setdefault(dataset, _DatasetState())
            finished = sum(1 for e in self.store.episodes(dataset) if e.done)
            if state.episodes_at_last_version < 0:
                self._resume(dataset, state, finished)
            latest = self.registry.latest(dataset)
            needed = self.config.round_episodes if latest else self.config.first_round_episodes
            if finished - state.episodes_at_last_version < needed:
                continue
            rows = self.store.committed_rows(dataset)
            plan.append(_Round(dataset, finished, rows, latest.version if latest else 0))
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
                checkpoint = self._checkpoint(item.dataset)
                if checkpoint is not None and state.policy is not None and state.optimizer is not None:
                    agent = state.agent
                    checkpoint.save(
                        version.version,
                        state.total_steps,
                        item.finished,
                        state.policy,
                        state.optimizer,
                        algorithm=self.config.algorithm,
                        modules=agent.modules() if agent is not None else None,
                        optimizers=agent.optimizers() if agent is not None else None,
                    )
        return published, False, trained

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
        if self.config.algorithm == "sac":
            result = self._train_sac(dataset, state, rows, current_version)
        else:
            result = self._train_hg_dagger(dataset, state, rows, current_version)
        if result is None:
            return None
        policy, note, loss = result
        state.rounds += 1
        state.total_steps += self.config.train_steps
        if not self.dist.is_main:
            return None
        on_cpu = all(t.device.type == "cpu" for t in policy.state_dict().values())
        policy_cpu = policy if on_cpu else _cpu_copy(policy)
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
        return version

    def _seed(self, state: _DatasetState) -> int:
        """Each rank draws its own batches; single-process HG-DAgger keeps seed 0 as it always had."""
        return self.config.seed + self.dist.rank + (1000 * state.rounds if self.config.algorithm == "sac" else 0)

    def _step_hook(self, dataset: str, modules: dict[str, nn.Module]) -> Callable[[int], None] | None:
        if self.on_step is None:
            return None
        hook = self.on_step
        return lambda step: hook(dataset, step, modules)

    def _sampler(self, table: StepTable, trainable: tuple[str, ...], ratios, version: int, eligible=None) -> Sampler:
        priority = self.config.sampler.foresight_weights(table)
        return Sampler.build(table, ratios, trainable, self.config.staleness, version, eligible, priority)

    def _train_hg_dagger(
        self, dataset: str, state: _DatasetState, rows: int | None, current_version: int
    ) -> tuple[Policy, str, float] | None:
        schema = self.store.schema(dataset)
        names = [n for n in schema if n.startswith("obs.")] + ["action"]
        table = load_steps(self.store, dataset, names, rows, self.config.sampler.offline_sources)
        sampler = self._sampler(table, LABELLED_KINDS, self.config.sampler.ratios_for(dataset), current_version)
        if sampler.size < 2:
            return None
        training = {name: table.columns[name][sampler.rows] for name in names}
        chunk = self.config.chunk_size_for(dataset)
        policy_type, fields = self.config.policy_for(dataset)
        # The same data and seed give the same policy whatever ran before in this process: initialization and any
        # randomness inside training (dropout, lerobot's VAE and noise samples) draw from a seeded generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed(state))
            policy = policy_for_schema(schema, self.config.hidden, chunk, policy_type, fields)
            device = self.dist.device
            if isinstance(policy, LerobotPolicy):  # lerobot's loss takes action sequences at the model's offsets
                actions, pad = table.sequences("action", policy.action_offsets())
                training["action"], training["action_is_pad"] = actions[sampler.rows], pad[sampler.rows]
                device = torch.device(policy.config.device)  # its processors move every batch there
            elif chunk > 1:
                training["action"] = table.chunks("action", chunk)[sampler.rows]
            policy.to(device)
            optimizer = torch.optim.AdamW(policy.parameters(), lr=self.config.learning_rate)
            loss = train_policy(
                policy,
                training,
                steps=self.config.train_steps,
                batch_size=self.config.batch_size,
                lr=self.config.learning_rate,
                optimizer=optimizer,
                seed=self._seed(state),
                index_sampler=sampler.draw,
                wrap=self.dist.wrap if self.dist.distributed else None,
                on_step=self._step_hook(dataset, {"policy": policy}),
                device=device,
            )
        state.policy, state.optimizer = policy, optimizer
        what = f"hg-dagger (lerobot {policy.lerobot_type})" if isinstance(policy, LerobotPolicy) else "hg-dagger"
        return policy, f"{what} on {sampler.size} labelled steps{_describe(sampler)}", loss

    def _train_sac(
        self, dataset: str, state: _DatasetState, rows: int | None, current_version: int
    ) -> tuple[Policy, str, float] | None:
        schema = self.store.schema(dataset)
        obs_names = [n for n in schema if n.startswith("obs.")]
        table = load_steps(
            self.store, dataset, [*obs_names, "action", "reward"], rows, self.config.sampler.offline_sources
        )
        ratios = self.config.sampler.ratios_for(dataset) or self.config.sac.ratios()
        sampler = self._sampler(table, KINDS, ratios, current_version, eligible=table.has_transition())
        if sampler.size < 2:
            return None
        picked = sampler.rows
        successor = np.where(table.next_row[picked] >= 0, table.next_row[picked], picked)
        device = self.dist.device
        data = {name: table.columns[name][picked] for name in [*obs_names, "action", "reward"]}
        data.update({f"next.{name}": table.columns[name][successor] for name in obs_names})
        data["terminal"] = table.terminal[picked].astype(np.float32)
        data["labelled"] = (table.kind[picked] != KINDS.index("online")).astype(np.float32)
        if state.agent is None:
            limits = self.config.sac.limits_for(dataset) or known_action_limits(dataset)
            if limits is None:
                actions = table.columns["action"].reshape(table.rows, -1)
                low, high = actions.min(axis=0), actions.max(axis=0)
                limits = ([float(x) for x in low], [float(x) for x in np.maximum(high, low + 1e-3)])
                log.warning("%s: no action limits known; SAC uses the data's range %s..%s", dataset, *limits)
            actor = SACActorPolicy(
                _observation_spec(schema),
                int(np.prod(schema["action"].shape)),
                limits[0],
                limits[1],
                hidden=self.config.hidden,
                explore=self.config.sac.explore,
            )
            actor.to(device)
            state.agent = self._new_agent(actor)
        agent = state.agent
        # Refit on all data each round: the first rounds' few demonstrations say little about the state's spread
        # (two episodes give two goal positions); actor and critics share this normalization and adapt together.
        agent.actor.fit_normalization(data)
        agent.actor.to(device)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in data.items()}
        generator = torch.Generator().manual_seed(self._seed(state))
        hook = self._step_hook(dataset, {"actor": agent.actor, **agent.modules()})
        agent.actor.train()
        recent: list[float] = []
        for step in range(1, self.config.train_steps + 1):
            index = sampler.draw(self.config.batch_size, generator).to(device)
            stats = agent.update({k: v[index] for k, v in tensors.items()}, generator)
            recent = [*recent[-19:], stats["critic_loss"]]
            if hook is not None:
                hook(step)
        agent.actor.eval()
        state.policy, state.optimizer = agent.actor, agent.actor_optimizer
        note = f"sac on {sampler.size} transitions{_describe(sampler)}, temperature {stats['temperature']:.3f}"
        return agent.actor, note, float(np.mean(recent))

    def run(self, stop: threading.Event, max_rounds: int = 0) -> None:
        """Polls until ``stop`` (rank 0's decides for every rank) or after ``max_rounds`` trained rounds (0: no cap)."""
        log.info("learner watching %s", self.store.root)
        rounds = 0
        while True:
            try:
                _, stopping, trained = self._poll(stop=stop.is_set() or bool(max_rounds and rounds >= max_rounds))
            except Exception:
                if self.dist.distributed:
                    raise  # a rank that skips a collective would hang the others: stop them all
                log.exception("learner round failed; retrying at the next poll")
                stopping, trained = False, 0
            if stopping:
                return
            rounds += trained
            if not (max_rounds and rounds >= max_rounds):
                stop.wait(self.config.poll_s)


HGDaggerLearner = Learner  # the name it had while HG-DAgger was its only algorithm


def _describe(sampler: Sampler) -> str:
    sizes = sampler.group_sizes()
    parts = []
    if len(sizes) > 1:
        shares = sampler.shares()
        parts = [f"{name} {sizes[name]} at {shares[name]:.2f}" for name in sizes]
    if sampler.boosted:
        parts.append(f"{sampler.boosted} where the foresight was wrong weighted up")
    return f" ({', '.join(parts)})" if parts else ""


def _cpu_copy(policy: Policy) -> Policy:
    copy = make_policy(policy.type_name, policy.config_dict())
    copy.load_state_dict({k: v.detach().cpu() for k, v in policy.state_dict().items()})
    return copy
