"""A lab's lerobot pretrained_model folder (and a fleetloop weights file) as a policy for a robot: the folder is
hostile input, and a policy that does not fit the robot is refused with the feature named."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch

from hal.drivers import driver_capabilities
from policies.lerobot_policy import LerobotPolicy
from policies.mlp import MLPPolicy
from policies.pretrained_dir import PretrainedError, load_policy
from policies.spec import PolicySpec, SpecMismatch, map_inputs
from policies.weights import policy_from_bytes, policy_to_bytes
from tests.policies.pretrained_folders import (
    PANDA,
    edit_json,
    panda_act_folder,
    save_pretrained,
    sim_observation,
    small_mlp,
    tiny_act,
)

PRE = "policy_preprocessor.json"
STATS = "policy_preprocessor_step_3_normalizer_processor.safetensors"  # lerobot's name for the normalizer's state


pytestmark = pytest.mark.usefixtures("two_torch_threads")


def robot(name: str) -> PolicySpec:
    return PolicySpec.from_capabilities(driver_capabilities(name))


@pytest.fixture(scope="module")
def act_folder(tmp_path_factory) -> Path:
    return panda_act_folder(tmp_path_factory.mktemp("act") / "pretrained_model")


@pytest.fixture
def folder(act_folder: Path, tmp_path: Path) -> Path:
    """A copy of the good folder, for a test to spoil."""
    return Path(shutil.copytree(act_folder, tmp_path / "pretrained_model"))


def test_a_folder_lerobot_saved_acts_on_the_robot_as_the_policy_that_saved_it(act_folder: Path) -> None:
    original = tiny_act(sim_observation(PANDA), 4)
    policy = load_policy(act_folder, robot(f"sim:{PANDA}"))
    assert isinstance(policy, LerobotPolicy) and policy.lerobot_type == "act"
    assert policy.inputs == {"observation.state": ["state"], "observation.environment_state": ["state"]}
    rebuilt = policy_from_bytes(policy_to_bytes(policy)).eval()  # as an edge rebuilds it from the registry
    rng = np.random.default_rng(3)
    for _ in range(3):
        observation = {"state": rng.uniform(-1, 1, 21).astype(np.float32)}
        expected = original.act(observation)
        np.testing.assert_allclose(policy.act(observation), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rebuilt.act(observation), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.05  # the statistics came along: actions in the robot's units, not zeros


def test_a_policy_for_another_robot_is_refused_naming_the_feature(act_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecMismatch, match=r"^observation.state: the policy expects shape \[21\], robot pusht gives"):
        load_policy(act_folder, robot("sim:pusht"))
    eight = save_pretrained(tiny_act({"state": {"shape": [8], "dtype": "float32"}}, 4), tmp_path / "eight")
    message = "observation.state: the policy expects shape [8], robot panda_pick_cube gives [21]"
    with pytest.raises(SpecMismatch) as refused:
        load_policy(eight, robot(f"sim:{PANDA}"))
    assert str(refused.value) == message
    six = save_pretrained(tiny_act(sim_observation(PANDA), 6), tmp_path / "six")
    with pytest.raises(SpecMismatch) as refused:
        load_policy(six, robot(f"sim:{PANDA}"))
    assert str(refused.value) == "action: the policy gives 6 values, robot panda_pick_cube takes 4"


def test_a_camera_maps_by_name_or_as_the_only_one_and_its_size_must_fit(tmp_path: Path) -> None:
    observation = {"top": {"shape": [48, 48, 3], "dtype": "uint8"}, "pos": {"shape": [2], "dtype": "float32"}}
    folder = save_pretrained(tiny_act(observation, 2), tmp_path / "cam")  # observation.images.top, observation.state
    cart = {"pixels": {"shape": [48, 48, 3], "dtype": "uint8"}, "agent_pos": {"shape": [2], "dtype": "float32"}}
    policy = load_policy(folder, PolicySpec(cart, 2, "robot cart"))
    assert policy.inputs == {"observation.images.top": ["pixels"], "observation.state": ["agent_pos"]}
    assert policy.act({"pixels": np.zeros((48, 48, 3), np.uint8), "agent_pos": np.ones(2, np.float32)}).shape[1] == 2
    with pytest.raises(SpecMismatch) as refused:
        load_policy(folder, robot("sim:pusht"))  # 96x96 frames
    expected = "the policy expects images [3, 48, 48] (channels, height, width), robot pusht gives [3, 96, 96]"
    assert str(refused.value).startswith(f"observation.images.top: {expected}")


def test_inputs_map_by_hand_and_a_wrong_map_is_named() -> None:
    spec = PolicySpec(
        {
            "front": {"shape": [4, 4, 3], "dtype": "uint8"},
            "wrist": {"shape": [4, 4, 3], "dtype": "uint8"},
            "joints": {"shape": [6], "dtype": "float32"},
            "gripper": {"shape": [1], "dtype": "float32"},
        },
        7,
        "robot arm",
    )
    features = {"observation.images.top": ("VISUAL", (3, 4, 4)), "observation.state": ("STATE", (7,))}
    with pytest.raises(SpecMismatch, match="observation.images.top: robot arm has no camera 'top'"):
        map_inputs(features, spec)
    mapped = map_inputs(features, spec, {"observation.images.top": ["wrist"]})
    assert mapped == {"observation.images.top": ["wrist"], "observation.state": ["gripper", "joints"]}
    with pytest.raises(SpecMismatch, match="observation.images.side: is no input of the policy"):
        map_inputs(features, spec, {"observation.images.side": ["front"]})
    wrist = {"observation.images.top": ["wrist"]}
    with pytest.raises(SpecMismatch, match="observation.state: robot arm has no observation 'elbow'"):
        map_inputs(features, spec, {**wrist, "observation.state": ["elbow"]})
    with pytest.raises(SpecMismatch, match=r"observation.state: the policy expects shape \[7\], robot arm gives \[6\]"):
        map_inputs(features, spec, {**wrist, "observation.state": ["joints"]})
    with pytest.raises(SpecMismatch, match="observation.state: the policy expects a vector, robot arm's 'front'"):
        map_inputs(features, spec, {**wrist, "observation.state": ["front"]})


def _malicious_pickle(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return pickle.dumps(Payload())


def rewrite_tensors(path: Path, change) -> None:
    """``change(name, tensor)`` -> the tensor to write instead, or None to leave it out."""
    tensors = {k: change(k, v) for k, v in safetensors.torch.load_file(path).items()}
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items() if v is not None}, path)


# (what spoils the folder, the file and field the error must name)
SPOILED = {
    "config_not_json": (lambda f: (f / "config.json").write_text("{not json"), "config.json: not JSON"),
    "config_a_list": (lambda f: (f / "config.json").write_text("[]"), "config.json: must be a JSON object"),
    "unknown_type": (
        lambda f: edit_json(f / "config.json", lambda c: c.update(type="nope")),
        "config.json: type: 'nope' is no lerobot policy type",
    ),
    "unknown_field": (
        lambda f: edit_json(f / "config.json", lambda c: c.update(warp_drive=3)),
        "config.json: act config: ",
    ),
    "hub_vlm": (
        lambda f: edit_json(f / "config.json", lambda c: c.update(vlm_model_name="HuggingFaceTB/SmolVLM2-500M")),
        "config.json: vlm_model_name: 'HuggingFaceTB/SmolVLM2-500M' is no folder on this machine",
    ),
    "no_config": (lambda f: (f / "config.json").unlink(), "config.json: missing in"),
    "no_weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors: missing"),
    "weights_a_pickle": (
        lambda f: (f / "model.safetensors").write_bytes(_malicious_pickle(f / "PWNED")),
        "model.safetensors: not a safetensors file",
    ),
    "tensors_for_another_config": (
        lambda f: edit_json(f / "config.json", lambda c: c.update(dim_feedforward=48)),
        "has shape [64], config.json makes it [48]",
    ),
    "missing_tensor": (
        lambda f: rewrite_tensors(f / "model.safetensors", lambda k, v: None if "decoder" in k else v),
        "model.safetensors: lacks",
    ),
    "nan_weights": (
        lambda f: rewrite_tensors(f / "model.safetensors", lambda k, v: v * float("nan")),
        "model.safetensors: tensor ",
    ),
    "no_preprocessor": (lambda f: (f / PRE).unlink(), f"{PRE}: missing"),
    "step_by_import_path": (
        lambda f: edit_json(f / PRE, lambda c: c["steps"][0].update(registry_name=None, **{"class": "os.system"})),
        f"{PRE}: steps[0].class: names 'os.system' by import path",
    ),
    "unknown_step": (
        lambda f: edit_json(f / PRE, lambda c: c["steps"][0].update(registry_name="rm_rf_processor")),
        f"{PRE}: steps[0].registry_name: 'rm_rf_processor' is not a processor step lerobot defines",
    ),
    "state_file_elsewhere": (
        lambda f: edit_json(f / PRE, lambda c: c["steps"][3].update(state_file="../../etc/stats.safetensors")),
        f"{PRE}: steps[3].state_file: '../../etc/stats.safetensors' must be a plain .safetensors file name",
    ),
    "bad_step_field": (
        lambda f: edit_json(f / PRE, lambda c: c["steps"][3]["config"].update(warp=1)),
        f"{PRE}: steps[3] (normalizer_processor).config: ",
    ),
    "statistics_a_pickle": (
        lambda f: (f / STATS).write_bytes(_malicious_pickle(f / "PWNED")),
        f"{STATS}: not a safetensors file",
    ),
    "statistics_for_another_robot": (
        lambda f: rewrite_tensors(f / STATS, lambda k, v: v[:8]),
        "observation.environment_state max has 8 values, config.json's observation.environment_state has shape [21]",
    ),
}


@pytest.mark.parametrize("spoil", sorted(SPOILED))
def test_a_hostile_folder_is_refused_naming_the_file_and_field(folder: Path, spoil: str) -> None:
    change, expected = SPOILED[spoil]
    change(folder)
    with pytest.raises(PretrainedError) as refused:
        load_policy(folder, robot(f"sim:{PANDA}"))
    assert expected in str(refused.value)
    assert not (folder / "PWNED").exists(), "a pickle in the folder was unpickled"


def test_a_checkpoint_folder_points_at_its_pretrained_model(act_folder: Path, tmp_path: Path) -> None:
    shutil.copytree(act_folder, tmp_path / "last" / "pretrained_model")
    with pytest.raises(PretrainedError, match="a lerobot checkpoint keeps it in pretrained_model/"):
        load_policy(tmp_path / "last")
    with pytest.raises(PretrainedError, match="no such folder or file"):
        load_policy(tmp_path / "nowhere")


def test_a_fleetloop_weights_file_is_checked_against_the_robot(tmp_path: Path) -> None:
    good = tmp_path / "mlp.safetensors"
    good.write_bytes(policy_to_bytes(small_mlp(sim_observation(PANDA))))
    policy = load_policy(good, robot(f"sim:{PANDA}"))
    assert isinstance(policy, MLPPolicy) and policy.config.hidden == (16,)
    small = tmp_path / "small.safetensors"
    small.write_bytes(policy_to_bytes(small_mlp({"state": {"shape": [8], "dtype": "float32"}})))
    with pytest.raises(SpecMismatch) as refused:
        load_policy(small, robot(f"sim:{PANDA}"))
    assert str(refused.value) == "observation.state: the policy expects shape [8], robot panda_pick_cube gives [21]"
    with pytest.raises(
        SpecMismatch, match=r"observation.state: the policy reads it, robot panda_pick_cube has no .*\(pixels\)"
    ):
        load_policy(small, PolicySpec({"pixels": {"shape": [8], "dtype": "uint8"}}, 4, "robot panda_pick_cube"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(_malicious_pickle(tmp_path / "PWNED"))
    with pytest.raises(PretrainedError, match="garbage.safetensors: not a fleetloop policy file"):
        load_policy(garbage, robot(f"sim:{PANDA}"))
    assert not (tmp_path / "PWNED").exists()


def test_weights_from_the_wire_naming_a_class_by_import_path_are_refused() -> None:
    """The same allow-list guards an edge: processor configs inside weights name only lerobot's registered steps."""
    policy = tiny_act(sim_observation(PANDA), 4)
    config = policy.config_dict()
    config["preprocessor"]["steps"][0] = {"class": "subprocess.Popen", "config": {"args": ["true"]}}
    tensors = {k: v.contiguous() for k, v in policy.state_dict().items()}
    data = safetensors.torch.save(tensors, metadata={"type": "lerobot", "config": json.dumps(config)})
    with pytest.raises(ValueError, match=r"preprocessor\.steps\[0\]\.class: names 'subprocess.Popen' by import path"):
        policy_from_bytes(data)
