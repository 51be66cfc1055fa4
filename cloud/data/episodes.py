"""An episode as the store knows it: its provenance and the statistics folded from its committed rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud.data import labels


@dataclass
class EpisodeRecord:
    dataset: str
    index: int  # the value of the episode_index column on this episode's rows
    episode_id: str
    resource_id: str
    source: str
    task: str
    num_steps: int = 0
    intervention_steps: int = 0
    success: bool = False  # any step succeeded
    done: bool = False  # the last step so far is done
    first_policy_version: int = -1
    last_seq: int = -1
    label: str = ""  # a person's verdict: "success", "failure", "discarded" (re-recorded: never trained on), or ""
    labelled_by: str = ""

    @property
    def next_seq(self) -> int:
        return self.last_seq + 1

    @property
    def discarded(self) -> bool:
        return self.label == labels.DISCARDED


def absorb(episodes: list[EpisodeRecord], stats: dict[str, np.ndarray], by_seq: bool = False) -> None:
    """Folds appended rows (in row order, which one store appends in seq order) into their episodes' statistics.
    ``by_seq``: order each episode's rows by seq instead, as a reader of several partitions
    (``cloud.data.store_union``) may meet an episode's rows in another order."""
    if len(stats["episode_index"]) == 0:
        return
    if by_seq:
        order = np.lexsort((stats["seq"], stats["episode_index"]))
    else:
        order = np.argsort(stats["episode_index"], kind="stable")  # stable: row order = seq order in an episode
    index = stats["episode_index"][order]
    groups, starts, counts = np.unique(index, return_index=True, return_counts=True)
    lasts = order[starts + counts - 1]
    firsts = order[starts]
    interventions = np.add.reduceat(stats["intervention"][order].astype(np.int64), starts)
    successes = np.logical_or.reduceat(stats["success"][order], starts)
    for g, first, last, count, n_int, ok in zip(
        groups.tolist(), firsts, lasts, counts.tolist(), interventions.tolist(), successes.tolist(), strict=True
    ):
        record = episodes[g]
        if record.num_steps == 0:
            record.first_policy_version = int(stats["policy_version"][first])
        record.num_steps += count
        record.intervention_steps += n_int
        record.success = record.success or ok
        if int(stats["seq"][last]) > record.last_seq:
            record.done = bool(stats["done"][last])
            record.last_seq = int(stats["seq"][last])
