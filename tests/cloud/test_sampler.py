"""The sampler: kinds of steps, exact per-group counts, staleness inside a group, transitions, config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
from cloud.learning.sampler import (
    KINDS,
    LABELLED_KINDS,
    Sampler,
    SamplerConfig,
    load_steps,
    parse_ratios,
    sequence_rows,
)
from cloud.learning.staleness import StalenessBudget
from tests.factories import step_columns, store_schema


def _write(store, episode_id, n, version, intervention, source="sim", success=False, done=True, first_seq=0):
    columns = step_columns(
        n,
        state=np.full((n, 3), first_seq, np.float32) + np.arange(n, dtype=np.float32)[:, None],
        intervention=intervention,
        done_at_end=done,
        success_at_end=success,
        policy_version=version,
    )
    store.write([StepRows("toy", episode_id, "r1", source, "toy", first_seq, columns)])


@pytest.fixture
def store(tmp_path):
    with EpisodeStore(tmp_path / "store") as store:
        store.ensure_dataset("toy", store_schema(state_dim=3, action_dim=2))
        _write(store, "demo", 4, 0, True, success=True)  # rows 0-3: an operator demo that succeeded
        _write(store, "run", 6, 2, np.array([0, 0, 1, 1, 0, 0], bool))  # rows 4-9: v2, corrected at 2-3
        _write(store, "old", 5, 1, False)  # rows 10-14: v1 alone, cut by the time limit
        _write(store, "imported", 3, 0, True, source="phone")  # rows 15-17
        yield store


def test_steps_fall_into_kinds_and_transitions_follow_episodes(store) -> None:
    table = load_steps(store, "toy", ["obs.state"], offline_sources=("phone",))
    kinds = [KINDS[k] for k in table.kind]
    assert kinds == ["demo"] * 4 + ["online"] * 2 + ["intervention"] * 2 + ["online"] * 7 + ["offline"] * 3
    assert table.next_row[:4].tolist() == [1, 2, 3, -1]
    assert table.terminal[:4].tolist() == [False, False, False, True]  # success ends it: no bootstrap
    assert table.next_row[10:15].tolist() == [11, 12, 13, 14, -1]
    assert not table.terminal[14] and not table.has_transition()[14]  # cut by the time limit: left out


def test_successor_of_an_episode_written_in_two_batches(tmp_path) -> None:
    with EpisodeStore(tmp_path / "s") as store:
        store.ensure_dataset("toy", store_schema(state_dim=3, action_dim=2))
        _write(store, "a", 2, 1, False, done=False)  # rows 0-1
        _write(store, "b", 2, 1, False)  # rows 2-3
        _write(store, "a", 2, 1, False, first_seq=2)  # rows 4-5: a continues
        table = load_steps(store, "toy", ["obs.state"])
        assert table.next_row.tolist() == [1, 4, 3, -1, 5, -1]


def test_batches_hold_exact_counts_per_group(store) -> None:
    table = load_steps(store, "toy", ["obs.state"], offline_sources=("phone",))
    ratios = parse_ratios("online=0.5,intervention+demo=0.3,offline=0.2")
    sampler = Sampler.build(table, ratios, KINDS, StalenessBudget(), current_version=2)
    assert sampler.counts(10) == {"online": 5, "intervention+demo": 3, "offline": 2}
    assert sampler.counts(7) == {"online": 4, "intervention+demo": 2, "offline": 1}  # largest remainder: 3.5/2.1/1.4
    positions = sampler.draw(1000, torch.Generator().manual_seed(0))
    rows = sampler.rows[positions.numpy()]
    drawn = np.bincount(table.kind[rows], minlength=4)
    assert (drawn[0], drawn[1] + drawn[2], drawn[3]) == (500, 300, 200)  # one batch of 1000: exact counts


def test_staleness_weights_apply_inside_the_online_group(store) -> None:
    table = load_steps(store, "toy", ["obs.state"])
    ratios = (("online", 0.5), ("intervention+demo", 0.5))
    sampler = Sampler.build(table, ratios, KINDS, StalenessBudget(1, "downweight", "exp"), current_version=2)
    p = dict(zip(sampler.rows.tolist(), sampler.probabilities().tolist(), strict=True))
    # online: 4 steps of v2 (weight 1) and 5 of v1 (weight 0.5): total 6.5 for half of each batch
    assert p[4] == pytest.approx(0.5 / 6.5) and p[10] == pytest.approx(0.5 * 0.5 / 6.5)
    # labelled (2 interventions, 4 + 3 demo steps: "phone" is no offline source here): exempt, uniform
    assert p[0] == pytest.approx(0.5 / 9) and p[6] == pytest.approx(0.5 / 9)
    assert sum(p.values()) == pytest.approx(1.0)
    dropped = Sampler.build(table, ratios, KINDS, StalenessBudget(0, "drop"), current_version=2)
    assert set(range(10, 15)).isdisjoint(dropped.rows.tolist())


def test_an_empty_group_gives_its_share_to_the_others(store) -> None:
    table = load_steps(store, "toy", ["obs.state"])
    sampler = Sampler.build(table, (("online", 0.5), ("offline", 0.5)), KINDS, StalenessBudget(), 2)
    assert sampler.shares() == {"online": 1.0, "offline": 0.0}
    assert sampler.counts(8) == {"online": 8, "offline": 0}


def test_default_draws_uniformly_over_the_trainable_kinds(store) -> None:
    table = load_steps(store, "toy", ["obs.state"])
    sampler = Sampler.build(table, None, LABELLED_KINDS, StalenessBudget(), 2)
    assert sampler.rows.tolist() == [0, 1, 2, 3, 6, 7, 15, 16, 17]  # every intervention-flagged step
    np.testing.assert_allclose(sampler.probabilities(), np.full(9, 1 / 9))
    with pytest.raises(ValueError, match="sampler.ratios.online: this algorithm cannot train on 'online'"):
        Sampler.build(table, (("online", 1.0),), LABELLED_KINDS, StalenessBudget(), 2)


def test_config_is_checked_and_names_the_field() -> None:
    with pytest.raises(ValueError, match="sampler.ratios: unknown kind 'onlin'"):
        SamplerConfig(ratios={"onlin": 1.0})
    with pytest.raises(ValueError, match=r"sampler.ratios.online: ratio must be a finite number >= 0"):
        SamplerConfig(ratios={"online": -0.1})
    with pytest.raises(ValueError, match="sampler.ratios: ratios must not all be 0"):
        SamplerConfig(ratios={"online": 0.0})
    with pytest.raises(ValueError, match="more than one group"):
        SamplerConfig(ratios={"online": 1.0, "online+demo": 1.0})
    with pytest.raises(ValueError, match="sampler.per_dataset.pick.demo"):
        SamplerConfig(per_dataset={"pick": {"demo": float("nan")}})
    with pytest.raises(ValueError, match="sampler.ratios: 'online' is not GROUP=RATIO"):
        parse_ratios("online")
    config = SamplerConfig(ratios={"online": 1, "demo": 1}, per_dataset={"pick": {"intervention+demo": 1.0}})
    assert config.ratios_for("pick") == (("intervention+demo", 1.0),)
    assert config.ratios_for("other") == (("online", 1.0), ("demo", 1.0))
    with pytest.raises(ValidationError, match="frozen"):
        config.ratios = None  # type: ignore[misc]


def test_steps_where_the_foresight_was_wrong_are_drawn_more_often(tmp_path) -> None:
    schema = store_schema(state_dim=3, action_dim=2)
    schema["meta.foresight_error"] = ColumnSpec("<f4", ())
    schema["meta.foresight_version"] = ColumnSpec("<i8", ())
    with EpisodeStore(tmp_path / "s") as store:
        store.ensure_dataset("toy", schema)
        columns = step_columns(4, intervention=True, done_at_end=True)
        columns["meta.foresight_error"] = np.array([0.0, 0.08, np.nan, 0.01], np.float32)  # 8 cm off at row 1
        columns["meta.foresight_version"] = np.array([3, 3, 0, 3], np.int64)
        store.write([StepRows("toy", "phone-demo", "p1", "phone", "toy", 0, columns)])
        table = load_steps(store, "toy", ["obs.state"])
    np.testing.assert_allclose(table.foresight_error, columns["meta.foresight_error"])
    assert "meta.foresight_error" not in table.columns  # read for the weights, not handed to training

    config = SamplerConfig(foresight_tolerance_m=0.02, foresight_max_weight=5.0)
    sampler = Sampler.build(table, None, LABELLED_KINDS, StalenessBudget(), 3, priority=config.foresight_weights(table))
    assert sampler.boosted == 1
    np.testing.assert_allclose(sampler.probabilities(), np.array([1, 4, 1, 1]) / 7)
    drawn = sampler.draw(7000, torch.Generator().manual_seed(0))
    assert np.bincount(drawn.numpy(), minlength=4)[1] / 7000 == pytest.approx(4 / 7, abs=0.03)
    assert SamplerConfig(foresight_max_weight=1).foresight_weights(table) is None  # the boost turned off


def test_chunks_follow_the_episode(store) -> None:
    table = load_steps(store, "toy", ["obs.state", "action"])
    chunks = table.chunks("obs.state", 3)
    assert chunks.shape == (table.rows, 3, 3)
    np.testing.assert_array_equal(chunks[2, :, 0], [2, 3, 3])  # the demo's last two steps, then it holds
    np.testing.assert_array_equal(chunks[10, :, 0], [0, 1, 2])  # episode "old" from its start


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"foresight_tolerance_m": 0}, "sampler.foresight_tolerance_m"),
        ({"foresight_tolerance_m": float("nan")}, "sampler.foresight_tolerance_m"),
        ({"foresight_max_weight": 0.5}, "sampler.foresight_max_weight"),
        ({"foresight_max_weight": "2"}, "sampler.foresight_max_weight"),
    ],
)
def test_foresight_settings_are_checked(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**fields)


def test_sequence_rows_walk_each_episode_both_ways_and_mark_padding() -> None:
    # rows 0, 1, 4 are one episode (written in two batches), rows 2, 3 another
    next_row = np.array([1, 4, 3, -1, -1])
    rows, pad = sequence_rows(next_row, [0, 1, 2])
    assert rows.tolist() == [[0, 1, 4], [1, 4, 4], [2, 3, 3], [3, 3, 3], [4, 4, 4]]
    assert pad.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 1], [0, 1, 1], [0, 1, 1]]
    rows, pad = sequence_rows(next_row, [-1, 0])  # an observation history: the step before, then this one
    assert rows.tolist() == [[0, 0], [0, 1], [2, 2], [2, 3], [1, 4]]
    assert pad[:, 0].tolist() == [True, False, True, False, False] and not pad[:, 1].any()
