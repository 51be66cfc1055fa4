"""HG-DAgger: each round trains the policy on every step a person labelled (corrections, demonstrations, imported
offline data); autonomous steps carry no label.

A round continues from the policy and optimizer the last round left (``LearnerConfig.warm_start``): the weights, the
normalization fitted at the first round and AdamW's moments all carry on, so a skill learned stays in the weights and
consecutive versions differ only by what the new data taught. A round starts afresh (a new policy, or a new copy of
the starting weights) when there is nothing to continue from, when what it would build now no longer has the last
one's architecture (the dataset's schema, its chunk size or its policy type changed), when ``--init`` names other
starting weights than those it grew from, or with ``warm_start`` off.

Between rounds the learner keeps training on the last round's data (``train_between``, in slices while no round is
due, up to ``train_steps`` steps per version), and the next round then trains only what is left of ``train_steps``
(at least a fifth of it, on the new data): a version is published soon after its episodes end, not a whole round
later.

A dataset named in ``LearnerConfig.chunk_sizes`` gets a policy that predicts that many actions at once (targets: the
step's action and the episode's next ones). ``LearnerConfig.policies`` picks the architecture per dataset
(``cloud.learning.policy_choice``); a lerobot policy trains with lerobot's own loss on action sequences cut from each
step's episode (``action_is_pad`` past its ends).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from cloud.learning.algorithms.base import Algorithm, NothingNew, RoundJob, RoundResult, SavedState
from cloud.learning.checkpoint import Checkpoint
from cloud.learning.config import TRAINS_ON
from cloud.learning.policy_choice import policy_for_schema
from cloud.learning.streaming import Streamed
from policies.base import Policy
from policies.lerobot_policy import LerobotPolicy
from policies.lora import LoraConfig, LoraPolicy
from policies.train import IndexSampler, train_policy

log = logging.getLogger("fleetloop.learner")


@dataclass(frozen=True)
class RoundData:
    """What a round trained on, kept to train on further until the next round."""

    dataset: str
    training: dict[str, np.ndarray]
    streamed: Streamed | None
    draw: IndexSampler
    device: torch.device
    seed: int


@dataclass
class TrainedPolicy:
    """HG-DAgger's state: the last policy and its optimizer (the next round continues them; the checkpoint keeps
    them), and the last round's data with the steps trained on it since (not checkpointed)."""

    policy: Policy
    optimizer: torch.optim.Optimizer
    data: RoundData | None = None
    steps_between: int = 0
    origin: str = ""  # the starting weights it was first trained from (``Init.label``; "": a random start)


class PolicyRounds(Algorithm[TrainedPolicy]):
    """An algorithm whose state is one policy and its optimizer: a checkpoint keeps the last ones."""

    def restore(self, saved: Checkpoint) -> TrainedPolicy:
        return TrainedPolicy(saved.policy, saved.optimizer, origin=saved.origin)

    def saved_state(self, trainable: TrainedPolicy) -> SavedState:
        return SavedState(trainable.policy, trainable.optimizer, origin=trainable.origin)


def _architecture(base: Policy, rank: int) -> tuple[str, dict]:
    """The type and config of what a fresh round trains: ``base`` itself, or (``rank`` > 0: only the adapters train,
    the starting weights stay as they came) LoRA around it; described without building the adapted copy."""
    if not rank:
        return base.type_name, base.config_dict()
    lora = LoraConfig(base_type=base.type_name, base_config=base.config_dict(), rank=rank)
    return LoraPolicy.type_name, lora.as_dict()


class HGDagger(PolicyRounds):
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
        # The same data and seed give the same fresh policy whatever ran before in this process: initialization and
        # any randomness inside training (dropout, lerobot's VAE and noise samples) draw from a seeded generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = policy_for_schema(schema, self.config.hidden, chunk, policy_type, fields) if init is None else None
            base = fresh if fresh is not None else init.policy  # fine-tuned with the normalization it came with
            rank = self.config.adapter_rank_for(job.dataset) if init is not None else 0
            origin = init.label if init is not None else ""
            warm = self.continues(trainable, _architecture(base, rank), origin)
            if warm is not None:  # a warm round: new batches, not the last round's again
                seed += 1 + job.current_version
                torch.manual_seed(seed)
                policy = warm.policy
            else:
                policy = LoraPolicy.around(base, rank=rank) if rank else base
            device = self.dist.device
            model = policy.inner if isinstance(policy, LoraPolicy) else policy
            if isinstance(model, LerobotPolicy):  # lerobot's loss takes action sequences at the model's offsets
                actions, pad = table.sequences("action", model.action_offsets())
                training["action"], training["action_is_pad"] = actions[sampler.rows], pad[sampler.rows]
                device = torch.device(model.config.device)  # its processors move every batch there
            elif chunk > 1:
                training["action"] = table.chunks("action", chunk)[sampler.rows]
            policy.to(device)
            steps = self.config.train_steps
            if warm is not None:  # what was trained between rounds counts towards this version's steps
                steps = max(steps // 5, steps - warm.steps_between)
                optimizer = warm.optimizer
                for group in optimizer.param_groups:
                    group["lr"] = self.config.learning_rate
            else:
                optimizer = torch.optim.AdamW(policy.parameters(), lr=self.config.learning_rate)
            loss = train_policy(
                policy,
                training,
                steps=steps,
                batch_size=self.config.batch_size,
                lr=self.config.learning_rate,
                optimizer=optimizer,
                seed=seed,
                fit_normalization=fresh is not None and warm is None,
                index_sampler=sampler.draw,
                wrap=self.dist.wrap if self.dist.distributed else None,
                on_step=self.step_hook(job.dataset, {"policy": policy}),
                device=device,
                streamed=streamed,
            )
        what = f"hg-dagger (lerobot {model.lerobot_type})" if isinstance(model, LerobotPolicy) else "hg-dagger"
        what += f" with LoRA adapters of rank {rank}" if isinstance(policy, LoraPolicy) else ""
        what += f" from {init.label}" if init is not None and warm is None else ""
        what += f" continued from v{job.current_version}" if warm is not None else ""
        note = f"{what} on {sampler.size} labelled steps{self.describe(sampler)}"
        if warm is not None and warm.steps_between:
            note += f", {warm.steps_between} of its {warm.steps_between + steps} steps trained before the round"
        size = self.config.batch_size
        metrics = self.round_metrics({"loss": loss}, sampler, table, job)
        data = RoundData(job.dataset, training, streamed, sampler.draw, device, seed)
        trained = TrainedPolicy(policy, optimizer, data, origin=origin)
        return RoundResult(trained, policy, note, loss, table.rows, metrics, steps, steps * size)

    def train_between(self, trainable: TrainedPolicy, steps: int) -> int:
        """Up to ``steps`` more gradient steps on the last round's data, while this version's budget
        (``train_steps``) lasts; the steps trained."""
        data = trainable.data
        if data is None or not self.config.warm_start:
            return 0
        steps = min(steps, self.config.train_steps - trainable.steps_between)
        if steps <= 0:
            return 0
        seed = data.seed + 7919 * (trainable.steps_between + steps)  # each slice its own batches
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            train_policy(
                trainable.policy,
                data.training,
                steps=steps,
                batch_size=self.config.batch_size,
                optimizer=trainable.optimizer,
                seed=seed,
                fit_normalization=False,
                index_sampler=data.draw,
                # Under torchrun every rank trains the same slice of its own batches, in lockstep: each decides
                # from the same rounds and budget.
                wrap=self.dist.wrap if self.dist.distributed else None,
                on_step=self.step_hook(data.dataset, {"policy": trainable.policy}),
                device=data.device,
                streamed=data.streamed,
            )
        trainable.steps_between += steps
        return steps

    def continues(
        self, trainable: TrainedPolicy | None, architecture: tuple[str, dict], origin: str
    ) -> TrainedPolicy | None:
        """``trainable`` when this round continues it: warm starts are on, the policy it holds has ``architecture``
        (the type and config of the one a fresh round would train now) and it grew from the same starting weights."""
        if not self.config.warm_start or trainable is None:
            return None
        if trainable.origin != origin:
            was = trainable.origin or "random weights"
            log.info("the starting weights changed (%s, was %s): this round starts afresh", origin or "random", was)
            return None
        same = (trainable.policy.type_name, trainable.policy.config_dict()) == architecture
        if not same:
            log.info("the policy's architecture changed since the last round: this round starts afresh")
        return trainable if same else None


def _chunk_size(policy: Policy) -> int:
    """Actions per prediction of a starting policy, from its config (built-in policies keep it there)."""
    return int(policy.config_dict().get("chunk_size", 1))
