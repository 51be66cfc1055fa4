"""Attacks on weights: a policy config that would run code, load a hub model or download, and registry files the
learner did not write. The real gateway on loopback and a real edge tunnel with its policy runtime."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.version_registry import PolicyRegistry
from policies.factory import make_policy
from policies.lerobot_policy import LerobotPolicy
from policies.signing import Signer
from policies.weights import policy_from_bytes, policy_to_bytes, read_metadata
from tests.attacks.weights_harness import edge_and_gateway, fleet_refusals
from tests.policies.lerobot_tiny import TINY_ACT
from tests.policies.pretrained_folders import panda_act_folder
from tests.policies.vla_tiny import tiny_smolvla_config, write_tiny_vlm_dir

OBSERVATION = {"state": {"shape": [3], "dtype": "float32"}}
LEROBOT_OBSERVATION = {"front": {"shape": [32, 32, 3], "dtype": "uint8"}, "state": {"shape": [3], "dtype": "float32"}}


def lerobot_weights() -> bytes:
    return policy_to_bytes(make_policy("lerobot", {**base_lerobot_config(), "lerobot_config": TINY_ACT}))


def base_lerobot_config() -> dict:
    return {"observation": LEROBOT_OBSERVATION, "action_dim": 2, "lerobot_type": "act"}


def with_config(weights: bytes, change) -> bytes:
    """The same tensors with the config in the metadata changed by ``change(config)``: a hostile file."""
    metadata = read_metadata(weights)
    config = json.loads(metadata["config"])
    change(config)
    tensors = safetensors.torch.load(weights)
    return safetensors.torch.save(tensors, metadata={**metadata, "config": json.dumps(config)})


@pytest.fixture
def no_network(monkeypatch) -> list[object]:
    """Every connection attempt is recorded and fails: a download shows up here."""
    attempts: list[object] = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network use in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or (_ for _ in ()).throw(OSError()))
    return attempts


def test_a_processor_step_naming_os_makedirs_creates_no_directory(tmp_path) -> None:
    """I put a step {"class": "os.makedirs", "config": {"name": ...}} in the preprocessor of a weights file, hoping
    lerobot imports os and calls makedirs on the robot's machine while it rebuilds the pipeline. Where `class` is
    refused, I name a step lerobot did register for another use, reward_classifier_processor: its pretrained_path
    is my folder, whose model_name is a folder of my code, which lerobot loads with trust_remote_code hard-wired on;
    my code calls os.makedirs."""
    target = tmp_path / "made-by-the-attacker"

    def by_class(config: dict) -> None:
        config["preprocessor"]["steps"][0] = {"class": "os.makedirs", "config": {"name": str(target)}}

    with pytest.raises(ValueError, match=r"preprocessor\.steps\[0\]\.class"):
        policy_from_bytes(with_config(lerobot_weights(), by_class))
    assert not target.exists()

    code = tmp_path / "encoder"
    code.mkdir()
    (code / "evil.py").write_text(f"import os\nos.makedirs({str(target)!r}, exist_ok=True)\n")
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (code / "config.json").write_text(json.dumps({"auto_map": auto_map, "model_type": "evil"}))
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    (classifier / "config.json").write_text(json.dumps({"type": "reward_classifier", "model_name": str(code)}))
    step = {"registry_name": "reward_classifier_processor", "config": {"pretrained_path": str(classifier)}}

    def by_registered_step(config: dict) -> None:
        config["preprocessor"]["steps"].insert(0, step)

    # 55a7c72 refused `class` already, but built any step lerobot registered: this one ran os.makedirs there.
    with pytest.raises(ValueError) as refused:
        policy_from_bytes(with_config(lerobot_weights(), by_registered_step))
    assert not target.exists(), "building the weights file ran my os.makedirs"
    refused.match(r"preprocessor\.steps\[0\]\.registry_name")


def test_a_tokenizer_step_with_trust_remote_code_runs_no_code(tmp_path) -> None:
    """I add lerobot's action_tokenizer_processor with trust_remote_code true, naming a folder whose processor
    config maps to my own Python file: transformers would import it and run my code on the robot."""
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(f"import os\nos.makedirs({str(marker)!r}, exist_ok=True)\n")
    auto_map = {"AutoProcessor": "evil.EvilProcessor", "AutoTokenizer": ["evil.EvilProcessor", None]}
    (folder / "processor_config.json").write_text(json.dumps({"auto_map": auto_map, "processor_class": "Evil"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto_map}))
    (folder / "config.json").write_text(json.dumps({"auto_map": auto_map, "model_type": "evil"}))
    step = {
        "registry_name": "action_tokenizer_processor",
        "config": {"action_tokenizer_name": str(folder), "trust_remote_code": True},
    }

    def hostile(config: dict) -> None:
        config["postprocessor"]["steps"].insert(0, step)

    with pytest.raises(ValueError, match=r"trust_remote_code"):
        policy_from_bytes(with_config(lerobot_weights(), hostile))
    assert not marker.exists()


def test_a_hub_name_in_a_config_reaches_no_network(no_network) -> None:
    """I set ACT's pretrained_backbone_weights and a tokenizer step naming a hub repo in a weights file, so that
    every robot rebuilding it downloads what I name (or fails slowly trying)."""

    def backbone(config: dict) -> None:
        config["lerobot_config"]["pretrained_backbone_weights"] = "ResNet18_Weights.IMAGENET1K_V1"

    def tokenizer(config: dict) -> None:
        config["preprocessor"]["steps"].insert(0, {"registry_name": "tokenizer_processor", "config": {}})
        config["preprocessor"]["steps"][0]["config"]["tokenizer_name"] = "attacker/tokenizer"

    weights = lerobot_weights()
    with pytest.raises(ValueError, match=r"lerobot_config\.pretrained_backbone_weights"):
        policy_from_bytes(with_config(weights, backbone))
    with pytest.raises(ValueError, match=r"tokenizer_name: 'attacker/tokenizer' is no folder"):
        policy_from_bytes(with_config(weights, tokenizer))
    assert no_network == []


def test_an_unsigned_file_written_into_the_registry_is_refused_and_offered_once_at_most(tmp_path) -> None:
    """With write access to the data folder only, I drop a well-formed policy file straight into registry/ as the
    next version, hoping every robot runs it."""
    layout = DataLayout(tmp_path)
    signing_registry(layout).publish("pick", weights(seed=1))  # v1, the learner's
    with edge_and_gateway(layout) as (edge, gateway):
        edge.wait_version(1)
        PolicyRegistry(layout.registry).publish("pick", weights(seed=2))  # v2, not through the learner's key
        time.sleep(3)
        assert edge.version() == 1 and edge.offers("pick", 2) <= 1
        assert "not signed by this cloud's learner" in fleet_refusals(gateway)


def test_a_file_signed_with_another_key_is_refused(tmp_path) -> None:
    """I sign my file with a key of my own, in the registry's format, hoping a signature is a signature."""
    layout = DataLayout(tmp_path)
    signing_registry(layout).publish("pick", weights(seed=1))
    with edge_and_gateway(layout) as (edge, gateway):
        edge.wait_version(1)
        PolicyRegistry(layout.registry, signer=Signer.generate()).publish("pick", weights(seed=2))
        time.sleep(3)
        assert edge.version() == 1 and edge.offers("pick", 2) <= 1
        assert "not signed by this cloud's learner" in fleet_refusals(gateway)


def test_a_version_the_edge_cannot_build_is_sent_once_not_in_a_loop(tmp_path) -> None:
    """A version no robot can build (its tensors do not fit its config) is refused by the edge: I hope the gateway
    answers each refusal with a fresh snapshot, thousands a second, flooding both logs and its CPU."""
    layout = DataLayout(tmp_path)
    registry = signing_registry(layout)
    registry.publish("pick", weights(seed=1))
    with edge_and_gateway(layout) as (edge, gateway):
        edge.wait_version(1)
        broken = with_config(weights(seed=2), lambda config: config.update(hidden=[7, 7]))
        registry.publish("pick", broken)  # signed as it is: only the edge finds it unbuildable
        time.sleep(3)
        assert edge.version() == 1
        assert edge.offers("pick", 2) == 1
        assert "pick v2" in fleet_refusals(gateway)


def test_the_learner_s_signed_header_over_other_tensors_is_refused_by_the_edge_once(tmp_path) -> None:
    """I copy a version the learner signed and change one weight, keeping its signed header, and write it into the
    registry as that version: the gateway checks only the header of a large full snapshot (past its first piece, the
    edges hash the tensors), so I hope the robot trusts the rest."""
    from cloud.data.learner_key import learner_signer

    layout = DataLayout(tmp_path)
    signing_registry(layout).publish("pick", weights(seed=1))
    with edge_and_gateway(layout) as (edge, gateway):
        edge.wait_version(1)
        large = weights(seed=2, hidden=[600, 500])  # 1.3 MB: more than the gateway's first 1 MB piece
        tampered = bytearray(learner_signer(layout).sign(large, "pick", 2))
        tampered[-3] ^= 0x40  # inside the last tensor's bytes
        PolicyRegistry(layout.registry).publish("pick", bytes(tampered))  # recorded with its own sha256
        deadline = time.monotonic() + 10
        while "pick v2" not in fleet_refusals(gateway):
            assert time.monotonic() < deadline, "the edge never refused the changed tensors"
            time.sleep(0.1)
        time.sleep(1)
        assert edge.version() == 1 and edge.offers("pick", 2) <= 1  # refused, and not sent again
        assert "not the ones the learner signed" in fleet_refusals(gateway)


MODEL_ROOTS = "FLEETLOOP_MODEL_ROOTS"
OUTSIDE = "lies outside the allowed model roots"
_WATCHED: list[str] = []  # path prefixes whose opening is recorded in _OPENED
_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    """Records every file opened and folder listed under a watched prefix (Python's audit events: builtins.open,
    os.open, os.listdir, os.scandir), whoever opens it: lerobot, transformers or fleetloop."""
    if _WATCHED and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, Path)):
        path = os.fspath(args[0])
        if any(path.startswith(prefix) for prefix in _WATCHED):
            _OPENED.append(path)


sys.addaudithook(_audit)


@contextlib.contextmanager
def nothing_opened_under(*folders: Path | str) -> Iterator[None]:
    _WATCHED[:] = [os.fspath(folder) for folder in folders]
    _OPENED.clear()
    try:
        yield
    finally:
        _WATCHED.clear()
    assert _OPENED == [], f"opened despite the refusal: {_OPENED[:5]}"


@pytest.fixture
def model_roots(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(the operator's one model root, a tiny model with a tokenizer outside it, in the attacker's reach)."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv(MODEL_ROOTS, str(root))
    return root, write_tiny_vlm_dir(tmp_path / "elsewhere" / "model")


def smolvla_weights(vlm_model_name: str) -> bytes:
    """A weights file whose config is a SmolVLA naming ``vlm_model_name``: the config is all that matters here."""
    config = {
        "observation": LEROBOT_OBSERVATION,
        "action_dim": 2,
        "lerobot_type": "smolvla",
        "lerobot_config": {**tiny_smolvla_config("/"), "vlm_model_name": vlm_model_name},
    }
    return safetensors.torch.save({"x": torch.zeros(1)}, metadata={"type": "lerobot", "config": json.dumps(config)})


def test_a_tokenizer_folder_outside_the_model_roots_is_never_read(model_roots) -> None:
    """I name a folder on the robot's machine outside the operator's model folders (another lab's model, a cache,
    /tmp) as the tokenizer of a step in a weights file, so every robot rebuilding it reads files I choose."""
    _, outside = model_roots

    def hostile(config: dict) -> None:
        step = {"registry_name": "tokenizer_processor", "config": {"tokenizer_name": str(outside)}}
        config["preprocessor"]["steps"].insert(0, step)

    weights = with_config(lerobot_weights(), hostile)
    with (
        nothing_opened_under(outside),
        pytest.raises(ValueError, match=r"steps\[0\]\.config\.tokenizer_name: .*" + OUTSIDE),
    ):
        policy_from_bytes(weights)


def test_a_symlink_inside_a_model_root_to_a_folder_outside_is_refused(model_roots) -> None:
    """With write access to the model root only, I leave a symlink there pointing at a model folder outside it and
    name the symlink as a SmolVLA's VLM: a check on the path as written would pass."""
    root, outside = model_roots
    link = root / "tiny-smolvlm"
    link.symlink_to(outside, target_is_directory=True)
    weights = smolvla_weights(str(link))
    with nothing_opened_under(outside, link), pytest.raises(ValueError, match=r"vlm_model_name: .*" + OUTSIDE):
        policy_from_bytes(weights)


def test_a_dotdot_path_climbing_out_of_a_model_root_is_refused(model_roots) -> None:
    """I name the tokenizer of an action-tokenizer step as <model root>/../elsewhere/model, a path that starts with
    the root but climbs out of it."""
    root, outside = model_roots
    climbing = f"{root}/../elsewhere/model"
    names = {"action_tokenizer_name": climbing, "paligemma_tokenizer_name": climbing}
    step = {"registry_name": "action_tokenizer_processor", "config": names}
    weights = with_config(lerobot_weights(), lambda config: config["postprocessor"]["steps"].insert(0, step))
    with (
        nothing_opened_under(outside, climbing),
        pytest.raises(ValueError, match=r"action_tokenizer_name: .*" + OUTSIDE),
    ):
        policy_from_bytes(weights)


def test_a_pretrained_folder_loaded_by_from_pretrained_dir_is_checked_before_lerobot_builds_it(tmp_path) -> None:
    """I hand a lab a lerobot pretrained_model folder whose policy_preprocessor.json has a step {"class":
    "os.makedirs"}: LerobotPolicy.from_pretrained_dir passes it to lerobot's own loader, which imports and calls it."""
    folder = panda_act_folder(tmp_path / "pretrained_model")
    target = tmp_path / "made-by-the-attacker"
    path = folder / "policy_preprocessor.json"
    pipeline = json.loads(path.read_text())
    pipeline["steps"][0] = {"class": "os.makedirs", "config": {"name": str(target)}}
    path.write_text(json.dumps(pipeline))
    with pytest.raises(ValueError, match=r"policy_preprocessor\.json: steps\[0\]\.class"):
        LerobotPolicy.from_pretrained_dir(folder)
    assert not target.exists()


def weights(seed: int, hidden: list[int] | None = None) -> bytes:
    import torch

    torch.manual_seed(seed)
    config = {"observation": OBSERVATION, "action_dim": 2, **({"hidden": hidden} if hidden else {})}
    return policy_to_bytes(make_policy("mlp", config))


os.environ.setdefault("HF_HUB_OFFLINE", "1")
