"""HG-DAgger's warm starts: a round continues the last round's policy, normalization and optimizer; it starts afresh
only when the architecture changed, when an operator asks, or with warm starts off."""

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.learning.config import LearnerConfig
from cloud.learning.learner import Learner
from cloud.learning.policy_choice import policy_for_schema
from fleetloop.cli import build_parser
from fleetloop.commands.learner import learner_config
from hal.config import ConfigError
from policies.weights import policy_from_bytes, policy_to_bytes
from tests.factories import episode_rows, step_columns, store_schema

SCHEMA = store_schema(state_dim=3, action_dim=2)


def episode(store: EpisodeStore, episode_id: str, shift: float = 0.0, n: int = 40) -> None:
    """A corrected episode whose states are centred on ``shift`` (a new place the robot went to)."""
    rng = np.random.default_rng(len(episode_id) + int(shift))
    state = (rng.normal(size=(n, 3)) + shift).astype(np.float32)
    columns = step_columns(n, state=state, action=np.tanh(state[:, :2]), intervention=True, done_at_end=True)
    store.write([episode_rows("toy", episode_id, columns)])


def adam_steps(learner: Learner) -> int:
    """Optimizer steps AdamW has taken on the dataset's policy (its per-parameter step count)."""
    optimizer = learner._datasets["toy"].trainable.optimizer
    return int(next(iter(optimizer.state.values()))["step"])


def learner_on(tmp_path, **config) -> tuple[EpisodeStore, PolicyRegistry, Learner]:
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("toy", SCHEMA)
    registry = PolicyRegistry(tmp_path / "registry")
    fields = {"first_round_episodes": 2, "round_episodes": 1, "train_steps": 40, "hidden": (16,), **config}
    return store, registry, Learner(store, registry, LearnerConfig(**fields), checkpoint_dir=tmp_path / "checkpoint")


def test_a_round_continues_the_last_policy_its_normalization_and_its_optimizer(tmp_path) -> None:
    store, registry, learner = learner_on(tmp_path)
    episode(store, "a")
    episode(store, "b")
    [v1] = learner.poll_once()
    first = learner._datasets["toy"].trainable
    assert adam_steps(learner) == 40 and "continued" not in v1.note
    episode(store, "far", shift=5.0)  # states the first normalization never saw
    [v2] = learner.poll_once()
    assert "continued from v1" in v2.note, v2.note
    assert learner._datasets["toy"].trainable.optimizer is first.optimizer
    assert adam_steps(learner) == 80  # AdamW's moments carried on
    p1, p2 = (policy_from_bytes(registry.read("toy", v)) for v in (1, 2))
    torch.testing.assert_close(p2.state_mean, p1.state_mean)  # fitted once, at the first round
    weights = [k for k in p1.state_dict() if k.endswith("weight")]
    assert weights and all(not torch.equal(p2.state_dict()[k], p1.state_dict()[k]) for k in weights)


def test_with_warm_starts_off_every_round_trains_a_fresh_policy(tmp_path) -> None:
    store, registry, learner = learner_on(tmp_path, warm_start=False)
    episode(store, "a")
    episode(store, "b")
    learner.poll_once()
    episode(store, "far", shift=5.0)
    [v2] = learner.poll_once()
    assert "continued" not in v2.note and adam_steps(learner) == 40
    p1, p2 = (policy_from_bytes(registry.read("toy", v)) for v in (1, 2))
    assert not torch.allclose(p2.state_mean, p1.state_mean)  # refitted to every labelled step


def test_a_restarted_learner_continues_its_checkpoint_unless_the_architecture_changed_or_it_is_told(
    tmp_path, caplog
) -> None:
    store, registry, learner = learner_on(tmp_path)
    episode(store, "a")
    episode(store, "b")
    learner.poll_once()

    episode(store, "c", shift=1.0)
    restarted = Learner(store, registry, learner.config, checkpoint_dir=tmp_path / "checkpoint")
    [v2] = restarted.poll_once()
    assert "continued from v1" in v2.note and adam_steps(restarted) == 80

    episode(store, "d", shift=2.0)
    told = Learner(
        store, registry, learner.config.model_copy(update={"fresh_start": True}), checkpoint_dir=tmp_path / "checkpoint"
    )
    with caplog.at_level(logging.INFO, logger="fleetloop.learner"):
        [v3] = told.poll_once()
    assert "continued" not in v3.note and adam_steps(told) == 40
    assert "starting afresh as asked" in caplog.text

    episode(store, "e", shift=3.0)
    wider = learner.config.model_copy(update={"hidden": (24,)})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fleetloop.learner"):
        [v4] = Learner(store, registry, wider, checkpoint_dir=tmp_path / "checkpoint").poll_once()
    assert "continued" not in v4.note
    assert "architecture changed" in caplog.text
    assert policy_from_bytes(registry.read("toy", 4)).config_dict()["hidden"] == [24]


def test_between_rounds_it_trains_on_the_last_round_s_data_and_the_next_round_trains_the_rest(tmp_path) -> None:
    store, registry, learner = learner_on(tmp_path)
    assert learner.train_between() == 0  # nothing trained yet: nothing to continue
    episode(store, "a")
    episode(store, "b")
    learner.poll_once()
    assert learner.train_between() == 40 and adam_steps(learner) == 80  # this version's budget: train_steps
    assert learner.train_between() == 0  # spent: the learner waits for new episodes
    episode(store, "c", shift=1.0)
    [v2] = learner.poll_once()
    assert adam_steps(learner) == 88  # a fifth of train_steps on the new data
    assert "40 of its 48 steps trained before the round" in v2.note, v2.note
    assert learner._datasets["toy"].total_steps == 88
    assert learner.train_between() == 40  # the new version's budget


def test_without_warm_starts_nothing_trains_between_rounds(tmp_path) -> None:
    store, _, learner = learner_on(tmp_path, warm_start=False)
    episode(store, "a")
    episode(store, "b")
    learner.poll_once()
    assert learner.train_between() == 0 and adam_steps(learner) == 40


@contextlib.contextmanager
def running(learner: Learner) -> Iterator[None]:
    """The learner's own loop on a thread while the block runs."""
    stop = threading.Event()
    runner = threading.Thread(target=learner.run, args=(stop,))
    runner.start()
    try:
        yield
    finally:
        stop.set()
        runner.join(timeout=30)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_running_learner_trains_between_rounds_until_the_version_s_budget_is_spent(tmp_path) -> None:
    store, _, learner = learner_on(tmp_path, poll_s=0.05)
    episode(store, "a")
    episode(store, "b")
    with running(learner):
        wait_until(lambda: "toy" in learner._datasets and learner._datasets["toy"].total_steps >= 80, "no training")
        time.sleep(0.5)  # it stops there: the budget of one version is train_steps
        assert learner._datasets["toy"].total_steps == 80 and adam_steps(learner) == 80


def autonomous_episode(store: EpisodeStore, episode_id: str, version: int) -> None:
    """An episode the policy drove alone: no step a person labelled."""
    columns = step_columns(20, intervention=False, done_at_end=True, success_at_end=True, policy_version=version)
    store.write([episode_rows("toy", episode_id, columns)])


@pytest.mark.parametrize("synchronous", [False, True])
def test_the_synchronous_schedule_publishes_every_round_and_trains_nothing_between(tmp_path, synchronous) -> None:
    """Its robots wait for each version: a round with no new labelled step publishes anyway (the same data trained
    further), where the asynchronous learner waits for new labels; and nothing trains between rounds."""
    store, registry, learner = learner_on(tmp_path, synchronous=synchronous, poll_s=0.05)
    episode(store, "a")
    episode(store, "b")
    with running(learner):
        wait_until(lambda: registry.latest("toy") is not None, "no first version")
        autonomous_episode(store, "c", version=1)
        if synchronous:
            wait_until(lambda: registry.latest("toy").version == 2, "the synchronous learner published no v2")
        else:
            wait_until(lambda: learner._datasets["toy"].total_steps >= 80, "no training between rounds")
        time.sleep(0.5)  # and nothing more after it
        latest = registry.latest("toy").version
        steps = learner._datasets["toy"].total_steps
    if synchronous:
        assert latest == 2 and steps == 80, (latest, steps)  # two rounds of 40, not a step between
        assert "continued from v1" in registry.latest("toy").note
    else:
        assert latest == 1 and steps == 80, (latest, steps)  # no new label: no v2; it trained v1's budget between


@pytest.mark.parametrize(
    ("adapters", "init", "message"),
    [
        ({"toy": 4}, {}, r"learner\.adapters\.toy: adapters train around a pretrained policy"),
        ({"toy": 0}, {"toy": "registry"}, r"learner\.adapters\.toy: the rank must be an integer in 1\.\.1024"),
        ([("toy", 2), ("toy", 4)], {"toy": "registry"}, r"learner\.adapters\.toy: given twice"),
    ],
)
def test_adapters_are_checked_with_the_field_named(adapters, init, message) -> None:
    with pytest.raises(ConfigError, match=message):
        LearnerConfig(adapters=adapters, init=init)


def test_the_adapters_flag_reaches_the_learner_config(tmp_path) -> None:
    assert learner_config(build_parser().parse_args(["learner", "--root", str(tmp_path)])).adapters == ()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["learner", "--root", str(tmp_path), "--adapters", "toy=abc"])
    args = build_parser().parse_args(["learner", "--root", str(tmp_path), "--adapters", "toy=4", "--no-warm-start"])
    with pytest.raises(ValueError, match=r"--adapters: .*adapters\.toy"):
        learner_config(args)  # no --init toy=...
    assert args.warm_start is False


def test_other_starting_weights_start_afresh_and_the_same_ones_continue_after_a_restart(tmp_path, caplog) -> None:
    store, registry, _ = learner_on(tmp_path)
    files = {}
    for name, seed in (("lab-a", 1), ("lab-b", 2)):
        torch.manual_seed(seed)
        policy = policy_for_schema(store.schema("toy"), (16,))
        policy.fit_normalization({"obs.state": np.zeros((4, 3), np.float32), "action": np.zeros((4, 2), np.float32)})
        files[name] = tmp_path / f"{name}.safetensors"
        files[name].write_bytes(policy_to_bytes(policy))

    def learner(source: str) -> Learner:
        config = LearnerConfig(
            first_round_episodes=2, round_episodes=1, train_steps=40, init={"toy": str(files[source])}
        )
        return Learner(store, registry, config, checkpoint_dir=tmp_path / "checkpoint")

    episode(store, "a")
    episode(store, "b")
    [v1] = learner("lab-a").poll_once()
    assert f"from {files['lab-a']}" in v1.note
    episode(store, "c", shift=1.0)
    [v2] = learner("lab-a").poll_once()  # restarted with the same starting weights: it continues
    assert "continued from v1" in v2.note
    episode(store, "d", shift=2.0)
    with caplog.at_level(logging.INFO, logger="fleetloop.learner"):
        [v3] = learner("lab-b").poll_once()
    assert f"from {files['lab-b']}" in v3.note and "continued" not in v3.note
    assert "the starting weights changed" in caplog.text
