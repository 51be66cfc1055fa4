import logging

import numpy as np
import pytest
import torch

from cloud.data.store import ColumnSpec, EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.learning.config import TRAINS_ON, LearnerConfig
from cloud.learning.learner import ALGORITHM_TYPES, HGDaggerLearner
from cloud.learning.sampler import SamplerConfig
from fleetloop.cli import build_parser
from fleetloop.commands.learner import cmd_learner, learner_config
from policies.weights import policy_from_bytes
from tests.factories import episode_rows, step_columns, store_schema

SCHEMA = store_schema(state_dim=3, action_dim=2)


def episode(store: EpisodeStore, episode_id: str, n: int, intervention: bool) -> None:
    state = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    columns = step_columns(n, state=state, action=state[:, :2] * 2, intervention=intervention, done_at_end=True)
    store.write([episode_rows("toy", episode_id, columns)])


def test_learner_publishes_after_enough_episodes_and_trains_on_labelled_steps(tmp_path) -> None:
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("toy", SCHEMA)
    registry = PolicyRegistry(tmp_path / "registry")
    learner = HGDaggerLearner(
        store, registry, LearnerConfig(first_round_episodes=2, round_episodes=2, train_steps=300, hidden=(32,))
    )
    episode(store, "a", 50, intervention=True)
    assert learner.poll_once() == []
    episode(store, "b", 50, intervention=True)
    [v1] = learner.poll_once()
    assert v1.version == 1 and "100 labelled steps" in v1.note
    policy = policy_from_bytes(registry.read("toy", 1))
    x = np.array([0.5, -0.5, 0.1], np.float32)
    assert np.allclose(policy.act({"state": x})[0], x[:2] * 2, atol=0.3)
    episode(store, "c", 50, intervention=False)
    assert learner.poll_once() == []
    episode(store, "d", 50, intervention=False)
    assert learner.poll_once() == []  # a round, but no new labelled step: nothing to publish
    episode(store, "e", 50, intervention=True)
    assert learner.poll_once() == []
    episode(store, "f", 50, intervention=False)
    [v2] = learner.poll_once()
    assert v2.version == 2 and "150 labelled steps" in v2.note  # autonomous steps carry no label


def test_learner_config_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="learner.round_episodes"):
        LearnerConfig(round_episodes=0)


def test_a_dataset_with_a_chunk_size_learns_the_next_actions_and_boosts_wrong_foresight(tmp_path) -> None:
    """``chunk_sizes``: the policy predicts the step's action and the episode's next ones (the phone policy's
    foresight trajectory); rows whose stored foresight error is large are sampled more and the note says so."""
    schema = store_schema(state_dim=1, action_dim=3)
    schema["meta.foresight_error"] = ColumnSpec("<f4", ())
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("traj", schema)
    registry = PolicyRegistry(tmp_path / "registry")
    config = LearnerConfig(
        first_round_episodes=2, train_steps=400, hidden=(64, 64), chunk_sizes={"traj": 4}, batch_size=64
    )
    learner = HGDaggerLearner(store, registry, config)
    t = np.arange(20, dtype=np.float32)
    for name, error in (("right", 0.0), ("wrong", 0.1)):  # the demonstrator went 10 cm from the foresight
        action = np.stack([(t + 1) / 20, np.zeros(20), np.zeros(20)], axis=1)  # x moves to the next step's
        columns = step_columns(20, state=t[:, None] / 20, action=action, intervention=True, done_at_end=True)
        columns["meta.foresight_error"] = np.full(20, error, np.float32)
        store.write([episode_rows("traj", name, columns)])
    [v1] = learner.poll_once()
    assert "20 where the foresight was wrong weighted up" in v1.note, v1.note
    policy = policy_from_bytes(registry.read("traj", 1))
    chunk = policy.act({"state": np.array([5 / 20], np.float32)})
    assert chunk.shape == (4, 3)
    np.testing.assert_allclose(chunk[:, 0], np.array([6, 7, 8, 9]) / 20, atol=0.06)
    chunk = policy.act({"state": np.array([18 / 20], np.float32)})
    np.testing.assert_allclose(chunk[:, 0], np.array([19, 20, 20, 20]) / 20, atol=0.06)  # the episode's end holds


@pytest.mark.parametrize(
    ("chunk_sizes", "message"),
    [({"phone": 0}, "learner.chunk_sizes.phone"), ({"": 3}, "learner.chunk_sizes"), ({"x": 2.5}, "chunk_sizes.x")],
)
def test_chunk_sizes_are_checked(chunk_sizes, message) -> None:
    with pytest.raises(ValueError, match=message):
        LearnerConfig(chunk_sizes=chunk_sizes)


def test_flags_carry_chunk_sizes_batch_size_and_foresight_weights() -> None:
    args = build_parser().parse_args(
        ["learner", "--chunk-size", "phone=4", "--chunk-size", "arm=2", "--batch-size", "32"]
        + ["--foresight-tolerance-m", "0.05", "--foresight-max-weight", "3"]
    )
    config = learner_config(args)
    assert config.chunk_sizes == (("arm", 2), ("phone", 4)) and config.batch_size == 32
    assert (config.sampler.foresight_tolerance_m, config.sampler.foresight_max_weight) == (0.05, 3.0)
    assert learner_config(build_parser().parse_args(["learner"])).chunk_size_for("phone") == 10  # the default
    with pytest.raises(ValueError, match="--foresight-max-weight"):
        learner_config(build_parser().parse_args(["learner", "--foresight-max-weight", "0.5"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["learner", "--chunk-size", "phone"])
    for bad, message in (
        (["--chunk-size", "phone=0"], r"--chunk-size: learner\.chunk_sizes\.phone: must be an integer in 1\.\.1000"),
        (["--foresight-tolerance-m", "-1"], r"--foresight-tolerance-m: sampler\.foresight_tolerance_m: .*than 0"),
    ):
        with pytest.raises(ValueError, match=message):
            learner_config(build_parser().parse_args(["learner", *bad]))


def test_the_learner_trains_a_lerobot_policy_with_its_own_loss_and_resumes_it(tmp_path) -> None:
    """``policies``: a dataset trained as lerobot ACT (tiny, random init, nothing downloaded) on action sequences
    cut from each step's episode; the published version is an ACT that acts in chunks and beats its untrained
    self on the demonstrations; a restarted learner resumes it from the checkpoint."""
    from policies.lerobot_policy import LerobotPolicy
    from tests.policies.lerobot_tiny import TINY_ACT

    schema = store_schema(state_dim=2, action_dim=2)
    schema["obs.camera"] = ColumnSpec("|u1", (24, 32, 3))
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("arm", schema)
    registry = PolicyRegistry(tmp_path / "registry")
    config = LearnerConfig(
        first_round_episodes=2, train_steps=120, batch_size=16, policies={"arm": ("act", TINY_ACT)}, seed=3
    )
    learner = HGDaggerLearner(store, registry, config, checkpoint_dir=tmp_path / "checkpoint")
    rng = np.random.default_rng(0)
    data = {}
    for name in ("a", "b"):
        state = rng.uniform(-1, 1, size=(15, 2)).astype(np.float32)
        columns = step_columns(15, state=state, action=state * 2, intervention=True, done_at_end=True)
        columns["obs.camera"] = rng.integers(0, 256, size=(15, 24, 32, 3), dtype=np.uint8)
        store.write([episode_rows("arm", name, columns)])
        data[name] = columns
    [v1] = learner.poll_once()
    assert v1.note.startswith("hg-dagger (lerobot act) on 30 labelled steps"), v1.note
    policy = policy_from_bytes(registry.read("arm", 1))
    assert isinstance(policy, LerobotPolicy) and policy.lerobot_type == "act" and policy.chunk_size == 5
    steps = data["a"]
    observations = [{"state": steps["obs.state"][i], "camera": steps["obs.camera"][i]} for i in range(15)]
    chunks = policy.act_batch(observations)
    assert chunks.shape == (15, 5, 2)
    torch.manual_seed(0)
    untrained = LerobotPolicy(policy.observation, 2, "act", TINY_ACT)
    untrained.fit_normalization({"obs.state": steps["obs.state"], "obs.camera": steps["obs.camera"], **steps})
    untrained.eval()
    error = np.abs(chunks[:, 0] - steps["action"]).mean()
    before = np.abs(untrained.act_batch(observations)[:, 0] - steps["action"]).mean()
    print(f"lerobot act: mean |error| {error:.3f} trained vs {before:.3f} untrained")
    assert error < 0.6 * before, (error, before)

    resumed = HGDaggerLearner(store, registry, config, checkpoint_dir=tmp_path / "checkpoint")
    assert resumed.poll_once() == []  # carries on from v1: no retraining without new episodes
    state = resumed._datasets["arm"]
    assert isinstance(state.trainable.policy, LerobotPolicy) and state.total_steps == 120


def test_policy_choices_are_checked_when_the_learner_is_configured(tmp_path) -> None:
    with pytest.raises(ValueError, match="learner.policies.arm: unknown lerobot policy type 'nope'"):
        LearnerConfig(policies={"arm": "nope"})
    with pytest.raises(ValueError, match="learner.policies.arm"):
        LearnerConfig(policies={"arm": ("act", {"no_such_field": 1})})
    with pytest.raises(ValueError, match="sac trains its own actor"):
        LearnerConfig(algorithm="sac", policies={"arm": "act"})
    fields = tmp_path / "act.json"
    fields.write_text('{"chunk_size": 4, "n_action_steps": 4}')
    with pytest.raises(ValueError, match="--policy-config arm"):  # a config without its policy type
        learner_config(build_parser().parse_args(["learner", "--policy-config", f"arm={fields}"]))
    args = build_parser().parse_args(["learner", "--policy", "arm=act", "--policy-config", f"arm={fields}"])
    assert learner_config(args).policy_for("arm") == ("act", {"chunk_size": 4, "n_action_steps": 4})
    with pytest.raises(ValueError, match="--policy: learner.policies.arm: unknown lerobot policy type"):
        learner_config(build_parser().parse_args(["learner", "--policy", "arm=actt"]))
    fields.write_text("[1, 2]")
    with pytest.raises(SystemExit):  # argparse names the flag: the file must hold an object of fields
        build_parser().parse_args(["learner", "--policy", "arm=act", "--policy-config", f"arm={fields}"])
    assert LearnerConfig(policies={"arm": "cnn"}).policy_for("arm") == ("cnn", {})
    assert LearnerConfig().policy_for("arm") == ("auto", {})


def test_the_learner_has_an_algorithm_for_every_name_the_config_accepts() -> None:
    assert set(ALGORITHM_TYPES) == set(TRAINS_ON)
    for name, algorithm in ALGORITHM_TYPES.items():
        assert algorithm.name == name and algorithm.trains_on == TRAINS_ON[name]


def test_ratios_naming_steps_the_algorithm_cannot_train_on_stop_the_learner_at_start(caplog) -> None:
    """The README's ``--sample-ratios online=0.5,intervention+demo=0.5`` under the default hg-dagger: refused when
    the config is built (naming the flag and the group), not as a traceback every round that never publishes."""
    with pytest.raises(ValueError, match=r"learner\.sampler\.ratios\.online: hg-dagger cannot train on 'online'"):
        LearnerConfig(sampler=SamplerConfig(ratios={"online": 0.5, "intervention+demo": 0.5}))
    with pytest.raises(ValueError, match=r"learner\.sampler\.per_dataset\.arm\.online\+demo: hg-dagger cannot"):
        LearnerConfig(sampler=SamplerConfig(per_dataset={"arm": {"online+demo": 1.0}}))
    assert LearnerConfig(algorithm="sac", sampler=SamplerConfig(ratios={"online": 0.5, "intervention+demo": 0.5}))
    args = build_parser().parse_args(["learner", "--sample-ratios", "online=0.5,intervention+demo=0.5"])
    with pytest.raises(ValueError, match=r"--sample-ratios: .*cannot train on 'online' steps"):
        learner_config(args)
    assert cmd_learner(args) == 2  # stops at start: the learner never runs
    assert "refusing to start: --sample-ratios" in caplog.text


def test_a_round_without_new_labelled_steps_publishes_nothing_so_a_rollback_stays(tmp_path, caplog) -> None:
    """Episodes the policy ran alone bring HG-DAgger no label: a version trained on the same steps would replace a
    manual rollback within a round. Kept across a restart: the checkpoint knows which rows its version saw."""
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("toy", SCHEMA)
    registry = PolicyRegistry(tmp_path / "registry")
    config = LearnerConfig(first_round_episodes=2, round_episodes=2, train_steps=30, batch_size=16, hidden=(8,))
    learner = HGDaggerLearner(store, registry, config, checkpoint_dir=tmp_path / "checkpoint")
    for name in ("a", "b"):
        episode(store, name, 10, intervention=True)
    [v1] = learner.poll_once()
    for name in ("c", "d"):
        episode(store, name, 10, intervention=True)
    [v2] = learner.poll_once()
    rollback = registry.rollback("toy", to_version=v1.version)
    caplog.set_level(logging.INFO, logger="fleetloop.learner")
    for name in ("e", "f"):
        episode(store, name, 10, intervention=False)
    assert learner.poll_once() == []
    assert "toy: no new steps to train on (intervention+demo+offline) since v3; not publishing" in caplog.text
    assert registry.latest("toy") == rollback

    restarted = HGDaggerLearner(store, registry, config, checkpoint_dir=tmp_path / "checkpoint")
    assert restarted.poll_once() == []
    for name in ("g", "h"):
        episode(store, name, 10, intervention=False)
    assert restarted.poll_once() == []
    assert registry.latest("toy") == rollback
    episode(store, "i", 10, intervention=True)
    episode(store, "j", 10, intervention=False)
    [v4] = restarted.poll_once()
    assert v4.version == rollback.version + 1 == 4 and "50 labelled steps" in v4.note


def test_a_lerobot_config_that_lerobot_refuses_says_why(tmp_path) -> None:
    """The README's ACT example with ``{"chunk_size": 10}``: lerobot wants ``n_action_steps <= chunk_size``; the
    error carries that reason and names the fields instead of draccus' "Couldn't instantiate class ACTConfig"."""
    reason = r"act config: .*Got 100 for `n_action_steps` and 10 for `chunk_size`"
    with pytest.raises(ValueError, match=rf"learner\.policies\.pusht: {reason}"):
        LearnerConfig(policies={"pusht": ("act", {"chunk_size": 10})})
    fields = tmp_path / "act.json"
    fields.write_text('{"chunk_size": 10}')
    args = build_parser().parse_args(["learner", "--policy", "pusht=act", "--policy-config", f"pusht={fields}"])
    with pytest.raises(ValueError, match=rf"--policy: learner\.policies\.pusht: {reason}"):
        learner_config(args)
