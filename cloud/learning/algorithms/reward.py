"""Training a dataset's reward classifier (``policies.reward_classifier``: lerobot's) on its labelled frames; the
learner publishes it as the policy ``<dataset>.reward`` (``LearnerConfig.reward_classifiers``).

Which frames are which, per episode of the dataset (``LearnerConfig.reward``: N = ``positive_steps``, M =
``ambiguous_steps``):
- an episode still running (no step marked done) gives no frame;
- a finished episode with a step marked success gives success frames from its last N steps and failure frames from
  every step before its last N + M (the M steps just before success are left out: the scene is often all but solved);
- a finished episode without success gives failure frames from every step;
- an episode a person discarded (re-recorded) gives no frame.
Batches draw success and failure frames half and half, however few success frames there are. Each round trains a
fresh classifier on every labelled frame, like HG-DAgger's rounds.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from cloud.data.policy_import import observation_spec
from cloud.learning.algorithms.base import NothingNew, RoundJob, RoundResult
from cloud.learning.algorithms.hg_dagger import PolicyRounds, TrainedPolicy
from cloud.learning.checkpoint import Checkpoint
from cloud.learning.config import REWARD_SUFFIX, RewardTraining
from cloud.learning.sampler import KINDS
from policies.mlp import is_image
from policies.reward_classifier import LABEL, RewardClassifier, RewardClassifierConfig
from policies.train import train_policy

UNUSED, FAILURE, SUCCESS = -1, 0, 1
log = logging.getLogger("fleetloop.learner")


def frame_labels(
    episode_index: np.ndarray, seq: np.ndarray, done: np.ndarray, success: np.ndarray, rule: RewardTraining
) -> np.ndarray:
    """SUCCESS, FAILURE or UNUSED per row, by the rule in the module docstring (rows in any order)."""
    labels = np.full(len(seq), UNUSED, np.int8)
    if not len(seq):
        return labels
    episodes, row_episode = np.unique(episode_index, return_inverse=True)
    last_seq = np.full(len(episodes), -1, np.int64)
    np.maximum.at(last_seq, row_episode, seq)
    finished = np.zeros(len(episodes), bool)
    np.logical_or.at(finished, row_episode, done.astype(bool))
    succeeded = np.zeros(len(episodes), bool)
    np.logical_or.at(succeeded, row_episode, success.astype(bool))
    from_end = last_seq[row_episode] - seq  # 0 on an episode's last step
    won, ended = succeeded[row_episode], finished[row_episode]
    labels[ended & ~won] = FAILURE
    labels[ended & won & (from_end >= rule.positive_steps + rule.ambiguous_steps)] = FAILURE
    labels[ended & won & (from_end < rule.positive_steps)] = SUCCESS
    return labels


def source_dataset(policy_name: str) -> str:
    """The dataset whose classifier ``policy_name`` (``<dataset>.reward``) is."""
    return policy_name.removesuffix(REWARD_SUFFIX)


class RewardClassifierTraining(PolicyRounds):
    """Rounds of ``<dataset>.reward``: its ``RoundJob.dataset`` is the classifier's policy name."""

    name = "reward-classifier"
    trains_on = KINDS  # every frame of a labelled episode, whoever drove it

    def restore(self, saved: Checkpoint) -> TrainedPolicy:
        if not isinstance(saved.policy, RewardClassifier):
            raise ValueError(f"the checkpoint holds a {saved.policy.type_name} policy, not a reward classifier")
        return super().restore(saved)

    def train_round(
        self, job: RoundJob, trainable: TrainedPolicy | None
    ) -> RoundResult[TrainedPolicy] | NothingNew | None:
        dataset, rule = source_dataset(job.dataset), self.config.reward
        schema = self.store.schema(dataset)
        cameras = {name: spec for name, spec in observation_spec(schema).items() if is_image(spec)}
        if not cameras:
            log.warning("%s: no camera in dataset %s, so no reward classifier to train", job.dataset, dataset)
            return NothingNew(self.store.committed_rows(dataset))
        table = self.steps.table(dataset, [f"obs.{name}" for name in cameras], job.rows)
        data = table.columns
        labels = frame_labels(data["episode_index"], data["seq"], data["done"], data["success"], rule)
        if table.discarded is not None:
            labels[table.discarded] = UNUSED  # a re-recorded episode teaches nothing, of either outcome
        rows = np.flatnonzero(labels != UNUSED)
        successes = int((labels == SUCCESS).sum())
        if successes == 0 or successes == len(rows):  # one kind alone teaches nothing; wait for more episodes
            kind = "no finished episode" if not len(rows) else "failure" if not successes else "success"
            log.info("%s: %s frames only so far; waiting for episodes of the other outcome", job.dataset, kind)
            return NothingNew(table.rows)
        if rows[-1] < job.trained_rows:
            return NothingNew(table.rows)
        training = {LABEL: (labels[rows] == SUCCESS).astype(np.float32)}
        training.update({f"obs.{name}": data[f"obs.{name}"][rows] for name in cameras if f"obs.{name}" in data})
        streamed = self.streamed(table, {name: (name, rows) for name in table.streamed})
        # Half of each batch from each label, however rare success frames are.
        weights = np.where(training[LABEL] > 0, 0.5 / successes, 0.5 / (len(rows) - successes))
        config = RewardClassifierConfig(
            observation=cameras,
            encoder=rule.encoder,
            hidden_dim=rule.hidden_dim,
            latent_dim=rule.latent_dim,
        )
        seed = self.seed(job.rounds_before)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same frames and seed give the same classifier
            classifier = RewardClassifier(config)
            optimizer = torch.optim.AdamW(classifier.parameters(), lr=rule.learning_rate)
            loss = train_policy(
                classifier,
                training,
                steps=rule.train_steps,
                batch_size=rule.batch_size,
                lr=rule.learning_rate,
                weights=weights,
                seed=seed,
                optimizer=optimizer,
                wrap=self.dist.wrap if self.dist.distributed else None,
                on_step=self.step_hook(job.dataset, {"policy": classifier}),
                streamed=streamed,
            )
        classifier.eval()
        note = f"reward classifier on {successes} success and {len(rows) - successes} failure frames"
        metrics = self.round_metrics({"loss": loss})
        steps = rule.train_steps
        trained = TrainedPolicy(classifier, optimizer)
        return RoundResult(trained, classifier, note, loss, table.rows, metrics, steps, steps * rule.batch_size)
