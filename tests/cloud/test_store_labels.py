"""The store keeps a person's label on an episode and who gave it; old stores read on; the learner skips discards."""

from __future__ import annotations

import json

import numpy as np

from cloud.data.store import EpisodeStore, StepRows
from cloud.learning.sampler import LABELLED_KINDS, Sampler, load_steps
from cloud.learning.staleness import StalenessBudget
from tests.factories import step_columns, store_schema


def rows(episode_id: str, n: int, label: str = "", by: str = "", first_seq: int = 0, **kw) -> StepRows:
    columns = step_columns(n, done_at_end=bool(label), **kw)
    return StepRows("toy", episode_id, "arm-1", "robot", "pick", first_seq, columns, label=label, labelled_by=by)


def test_a_label_lands_on_its_episode_for_the_writer_and_every_reader(tmp_path) -> None:
    with EpisodeStore(tmp_path / "store") as store:
        store.ensure_dataset("toy", store_schema())
        store.write([rows("a", 3), rows("b", 4, "discarded", "bo")])
        early = EpisodeStore(tmp_path / "store", read_only=True)  # a reader from before the next write
        store.write([rows("a", 3, "success", "ana", first_seq=3, success_at_end=True), rows("c", 2)])
        store.write([rows("a", 6, "failure", "ana", first_seq=0)])  # redelivered whole: nothing new, no new label
        early.refresh()
        for view in (store, early, EpisodeStore(tmp_path / "store", read_only=True)):
            a, b, c = view.episodes("toy")
            assert (a.label, a.labelled_by, a.discarded, a.num_steps) == ("success", "ana", False, 6)
            assert (b.label, b.labelled_by, b.discarded) == ("discarded", "bo", True)
            assert (c.label, c.labelled_by) == ("", "")
    lines = [json.loads(line) for line in (tmp_path / "store" / "toy" / "labels.jsonl").read_text().splitlines()]
    assert lines == [
        {"episode_id": "b", "seq": 3, "outcome": "discarded", "by": "bo"},
        {"episode_id": "a", "seq": 5, "outcome": "success", "by": "ana"},
    ]


def test_a_store_from_before_labels_reads_on_and_takes_them(tmp_path) -> None:
    root = tmp_path / "store"
    with EpisodeStore(root) as store:
        store.ensure_dataset("toy", store_schema())
        store.write([rows("old", 5)])
    commit_path = root / "toy" / "commit.json"
    commit = json.loads(commit_path.read_text())
    commit.pop("labels_bytes")  # as written before labels existed
    commit_path.write_text(json.dumps(commit))
    (old,) = EpisodeStore(root, read_only=True).episodes("toy")
    assert (old.num_steps, old.label) == (5, "")
    with EpisodeStore(root) as store:
        store.ensure_dataset("toy", store_schema())
        store.write([rows("new", 2, "failure", "ana")])
    old, new = EpisodeStore(root, read_only=True).episodes("toy")
    assert (old.label, new.label, new.labelled_by) == ("", "failure", "ana")


def test_the_learner_never_draws_a_discarded_episode(tmp_path) -> None:
    with EpisodeStore(tmp_path / "store") as store:
        store.ensure_dataset("toy", store_schema())
        store.write([rows("kept", 4, intervention=True), rows("redo", 4, "discarded", "a", intervention=True)])
        table = load_steps(store, "toy", ["obs.state"])
        sampler = Sampler.build(table, None, LABELLED_KINDS, StalenessBudget(), current_version=1)
    kept = np.flatnonzero(table.columns["episode_index"] == 0)
    assert sorted(sampler.rows.tolist()) == kept.tolist()  # every labelled step of the kept episode, none of redo's
