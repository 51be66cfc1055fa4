"""HG-DAgger: each round trains a fresh policy on every step a person labelled (corrections, demonstrations,
imported offline data); autonomous steps carry no label.

A dataset named in ``LearnerConfig.chunk_sizes`` gets a policy that predicts that many actions at once (targets: the
step's action and the episode's next ones). ``LearnerConfig.policies`` picks the architecture per dataset
(``cloud.learning.policy_choice``); a lerobot policy trains with lerobot's own loss on action sequences cut from each
step's episode (``action_is_pad`` past its ends).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cloud.learning.algorithms.base import Algorithm, NothingNew, RoundJob, RoundResult, SavedState
from cloud.learning.checkpoint import Checkpoint
from cloud.learning.config import TRAINS_ON
from cloud.learning.policy_choice import policy_for_schema
from policies.base import Policy
from policies.lerobot_policy import LerobotPolicy
from policies.train import train_policy


@dataclass
class TrainedPolicy:
    """HG-DAgger's state: the last policy and its optimizer (kept for the checkpoint; each round starts afresh)."""

    policy: Policy
    optimizer: torch.optim.Optimizer


class FreshPolicyRounds(Algorithm[TrainedPolicy]):
    """An algorithm whose rounds each train a fresh policy: a checkpoint keeps the last one and its optimizer."""

    def restore(self, saved: Checkpoint) -> TrainedPolicy:
        return TrainedPolicy(saved.policy, saved.optimizer)

    def saved_state(self, trainable: TrainedPolicy) -> SavedState:
        return SavedState(trainable.policy, trainable.optimizer)


class HGDagger(FreshPolicyRounds):
    name = "hg-dagger"
    trains_on = TRAINS_ON["hg-dagger"]

    def train_round(
        self, job: RoundJob, trainable: TrainedPolicy | None
    ) -> RoundResult[TrainedPolicy] | NothingNew | None:
        schema = self.store.schema(job.dataset)
        names = [n for n in schema if n.startswith("obs.")] + ["action"]
        table = self.steps.table(job.dataset, names, job.rows, self.config.sampler.offline_sources)
        sampler = self.sampler(table, self.config.sampler.ratios_for(job.dataset), job.current_version)
        if sampler.size < 2:
            return None
        if not self.has_new_rows(sampler, job):
            return NothingNew(table.rows)
        try:
            init = self.init.for_round(job.dataset, schema) if self.init is not None else None
        except ValueError:  # its starting policy does not fit the dataset (logged once): no version of it
            return None
        training = {name: table.columns[name][sampler.rows] for name in names if name not in table.streamed}
        streamed = self.streamed(table, {name: (name, sampler.rows) for name in table.streamed})
        chunk = self.config.chunk_size_for(job.dataset) if init is None else _chunk_size(init.policy)
        policy_type, fields = self.config.policy_for(job.dataset)
        seed = self.seed(job.rounds_before)
        # The same data and seed give the same policy whatever ran before in this process: initialization and any
        # randomness inside training (dropout, lerobot's VAE and noise samples) draw from a seeded generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if init is None:
                policy = policy_for_schema(schema, self.config.hidden, chunk, policy_type, fields)
            else:
                policy = init.policy  # fine-tuned with the normalization it came with
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
                seed=seed,
                fit_normalization=init is None,
                index_sampler=sampler.draw,
                wrap=self.dist.wrap if self.dist.distributed else None,
                on_step=self.step_hook(job.dataset, {"policy": policy}),
                device=device,
                streamed=streamed,
            )
        what = f"hg-dagger (lerobot {policy.lerobot_type})" if isinstance(policy, LerobotPolicy) else "hg-dagger"
        what += f" from {init.label}" if init is not None else ""
        note = f"{what} on {sampler.size} labelled steps{self.describe(sampler)}"
        steps, size = self.config.train_steps, self.config.batch_size
        metrics = self.round_metrics({"loss": loss}, sampler, table, job)
        return RoundResult(
            TrainedPolicy(policy, optimizer), policy, note, loss, table.rows, metrics, steps, steps * size
        )


def _chunk_size(policy: Policy) -> int:
    """Actions per prediction of a starting policy, from its config (built-in policies keep it there)."""
    return int(policy.config_dict().get("chunk_size", 1))
