"""SAC with human interventions (HIL-SERL / RLPD style) as a learner algorithm.

The agent (``sac_agent``: actor, twin critics, temperature) carries on from round to round; each round takes
``train_steps`` updates on batches that mix the online buffer (what the policy did) and the demonstration buffer
(what a person did) at ``sac.demo_ratio`` (default 50/50) unless the sampler sets ratios, and publishes the actor.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from cloud.learning.algorithms.base import Algorithm, NothingNew, RoundJob, RoundResult, SavedState
from cloud.learning.algorithms.sac_agent import SACAgent, known_action_limits
from cloud.learning.checkpoint import Checkpoint
from cloud.learning.config import TRAINS_ON
from cloud.learning.policy_choice import observation_spec
from cloud.learning.sampler import KINDS, Sampler, StepTable
from cloud.learning.streaming import Streamed
from policies.sac_actor import SACActorConfig, SACActorPolicy

log = logging.getLogger("fleetloop.learner")


class SAC(Algorithm[SACAgent]):
    name = "sac"
    trains_on = TRAINS_ON["sac"]

    def seed(self, rounds_before: int) -> int:
        return super().seed(rounds_before) + 1000 * rounds_before  # fresh batches each round: the agent carries on

    def restore(self, saved: Checkpoint) -> SACAgent:
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

    def saved_state(self, trainable: SACAgent) -> SavedState:
        return SavedState(trainable.actor, trainable.actor_optimizer, trainable.modules(), trainable.optimizers())

    def train_round(self, job: RoundJob, trainable: SACAgent | None) -> RoundResult[SACAgent] | NothingNew | None:
        schema = self.store.schema(job.dataset)
        obs_names = [n for n in schema if n.startswith("obs.")]
        table = self.steps.table(
            job.dataset, [*obs_names, "action", "reward"], job.rows, self.config.sampler.offline_sources
        )
        ratios = self.config.sampler.ratios_for(job.dataset) or self.config.sac.ratios()
        sampler = self.sampler(table, ratios, job.current_version, eligible=table.has_transition())
        if sampler.size < 2:
            return None
        if not self.has_new_rows(sampler, job):
            return NothingNew(table.rows)
        data, large = _transitions(table, sampler, obs_names)
        streamed = self.streamed(table, large)
        agent = trainable if trainable is not None else self._first_agent(job.dataset, schema, table)
        # Refit on all data each round: the first rounds' few demonstrations say little about the state's spread
        # (two episodes give two goal positions); actor and critics share this normalization and adapt together.
        agent.actor.fit_normalization(data if streamed is None else {**data, **streamed.sample()})
        device = self.dist.device
        agent.actor.to(device)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in data.items()}
        generator = torch.Generator().manual_seed(self.seed(job.rounds_before))
        hook = self.step_hook(job.dataset, {"actor": agent.actor, **agent.modules()})
        batches = _Batches(sampler, self.config.batch_size, self.config.train_steps, generator, streamed)
        agent.actor.train()
        recent: list[dict[str, float]] = []
        for step in range(1, self.config.train_steps + 1):
            index, fetched = batches.next()
            batch = {k: v[index.to(device)] for k, v in tensors.items()}
            batch.update({k: v.to(device) for k, v in fetched.items()})
            stats = agent.update(batch, generator)
            recent = [*recent[-19:], stats]
            if hook is not None:
                hook(step)
        agent.actor.eval()
        means = {name: float(np.mean([r[name] for r in recent])) for name in stats}  # over the last 20 updates
        note = f"sac on {sampler.size} transitions{self.describe(sampler)}, temperature {stats['temperature']:.3f}"
        metrics = self.round_metrics(means, sampler, table, job)
        steps = self.config.train_steps
        return RoundResult(
            agent, agent.actor, note, means["critic_loss"], table.rows, metrics, steps, steps * self.config.batch_size
        )

    def _first_agent(self, dataset: str, schema: dict, table: StepTable) -> SACAgent:
        """A new agent whose actor squashes into the task's action limits (else the data's range)."""
        limits = self.config.sac.limits_for(dataset) or known_action_limits(dataset)
        if limits is None:
            actions = table.columns["action"].reshape(table.rows, -1)
            low, high = actions.min(axis=0), actions.max(axis=0)
            limits = ([float(x) for x in low], [float(x) for x in np.maximum(high, low + 1e-3)])
            log.warning("%s: no action limits known; SAC uses the data's range %s..%s", dataset, *limits)
        actor = SACActorPolicy(
            SACActorConfig(
                observation=observation_spec(schema),
                action_dim=int(np.prod(schema["action"].shape)),
                action_low=limits[0],
                action_high=limits[1],
                hidden=self.config.hidden,
                explore=self.config.sac.explore,
            )
        )
        actor.to(self.dist.device)
        return self._new_agent(actor)

    def _new_agent(self, actor: SACActorPolicy) -> SACAgent:
        agent = SACAgent(actor, self.config.sac, wrap=self.dist.wrap if self.dist.distributed else None)
        for module in [agent.actor, *agent.modules().values()]:
            module.to(self.dist.device)
            self.dist.broadcast_module_(module)  # every rank starts from rank 0's networks, targets included
        agent.all_reduce_mean = self.dist.all_reduce_mean if self.dist.distributed else None
        return agent


class _Batches:
    """A round's batches: drawn one by one (the generator also drives the agent's updates), or, with large columns
    streamed, all drawn first so fetching them runs ahead of training."""

    def __init__(
        self, sampler: Sampler, size: int, steps: int, generator: torch.Generator, streamed: Streamed | None
    ) -> None:
        self.sampler, self.size, self.generator = sampler, size, generator
        self.drawn = [sampler.draw(size, generator) for _ in range(steps)] if streamed is not None else []
        self.fetched = streamed.batches(self.drawn) if streamed is not None else None

    def next(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.fetched is None:
            return self.sampler.draw(self.size, self.generator), {}
        return self.drawn.pop(0), next(self.fetched)


def _transitions(
    table: StepTable, sampler: Sampler, obs_names: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, np.ndarray]]]:
    """The sampler's rows as transitions: observations, action, reward, next observations, terminal, labelled; and
    the large observations' (streamed) store rows by batch key."""
    picked = sampler.rows
    successor = np.where(table.next_row[picked] >= 0, table.next_row[picked], picked)
    held = [name for name in obs_names if name not in table.streamed]
    data = {name: table.columns[name][picked] for name in [*held, "action", "reward"]}
    data.update({f"next.{name}": table.columns[name][successor] for name in held})
    data["terminal"] = table.terminal[picked].astype(np.float32)
    data["labelled"] = (table.kind[picked] != KINDS.index("online")).astype(np.float32)
    large = {name: (name, picked) for name in table.streamed}
    large.update({f"next.{name}": (name, successor) for name in table.streamed})
    return data, large
