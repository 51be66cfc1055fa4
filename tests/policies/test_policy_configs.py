"""Policy configs: typed and checked whole, so a bad one (from code, a weights file or an update) is refused with
a ConfigError naming the field, before any layer is built."""

from __future__ import annotations

import json

import pytest
import safetensors.torch

from hal.config import ConfigError
from policies.cnn import CNNConfig, CNNPolicy
from policies.factory import make_policy
from policies.lora import LoraConfig, LoraPolicy
from policies.mlp import MLPConfig, MLPPolicy
from policies.sac_actor import SACActorConfig, SACActorPolicy
from policies.updates import UpdateError, apply_update
from policies.weights import policy_from_bytes, policy_to_bytes

STATE = {"state": {"shape": [6], "dtype": "float32"}}
IMAGE = {"pixels": {"shape": [24, 24, 3], "dtype": "uint8"}}
MLP = {"observation": STATE, "action_dim": 2, "hidden": [32, 32]}
CONFIGS = {
    "mlp": MLP,
    "cnn": {"observation": IMAGE, "action_dim": 2, "channels": [4], "hidden": [8]},
    "sac_actor": {"observation": STATE, "action_dim": 2, "action_low": [-1, 0], "action_high": [1, 2], "hidden": [8]},
    "lora": {"base_type": "mlp", "base_config": {**MLP, "chunk_size": 1}, "rank": 2},
}
CLASSES = {"mlp": MLPConfig, "cnn": CNNConfig, "sac_actor": SACActorConfig, "lora": LoraConfig}


def weights_with_config(type_name: str, config: dict) -> bytes:
    """A weights file whose tensors are a good policy's but whose metadata carries ``config``."""
    tensors = {k: v.contiguous() for k, v in make_policy(type_name, CONFIGS[type_name]).state_dict().items()}
    return safetensors.torch.save(tensors, metadata={"type": type_name, "config": json.dumps(config)})


@pytest.mark.parametrize(
    ("type_name", "change", "message"),
    [
        (
            "mlp",
            {"extra": 1},
            r"^mlp\.extra: unknown key; known: observation, action_dim, chunk_size, hidden, action_levels$",
        ),
        ("mlp", {"action_dim": "2"}, r"^mlp\.action_dim: should be a valid integer, got '2'$"),
        ("mlp", {"hidden": [32, -32]}, r"^mlp\.hidden\[1\]: should be greater than or equal to 1, got -32$"),
        ("mlp", {"hidden": [10**9]}, r"^mlp\.hidden\[0\]: should be less than or equal to 16384, got 1000000000$"),
        (
            "mlp",
            {"observation": {"state": {"shape": [10**9], "dtype": "float32"}}},
            r"^mlp\.observation\.state\.shape\[0\]: ",
        ),
        ("mlp", {"observation": {"state": {"shape": [6], "dtype": "object"}}}, r"^mlp\.observation\.state\.dtype: "),
        ("cnn", {"channels": [4, 10**6]}, r"^cnn\.channels\[1\]: should be less than or equal to 1024"),
        ("sac_actor", {"explore": 1}, r"^sac_actor\.explore: should be a valid boolean, got 1$"),
        ("lora", {"base_config": {**MLP, "hidden": [10**9]}}, r"^lora\.base_config\.hidden\[0\]: should be less"),
        ("lora", {"base_type": "lora"}, r"^lora\.base_type: cannot be lora itself$"),
    ],
)
def test_a_weights_file_with_a_bad_config_is_refused_naming_the_field(type_name, change, message) -> None:
    blob = weights_with_config(type_name, {**CONFIGS[type_name], **change})
    with pytest.raises(ConfigError, match=message):
        policy_from_bytes(blob)
    with pytest.raises(UpdateError, match=message.replace("^", "", 1).removesuffix("$")):  # the edge's path
        apply_update(blob)


def test_the_untouched_config_loads() -> None:
    for type_name, config in CONFIGS.items():
        policy = policy_from_bytes(weights_with_config(type_name, config))
        assert policy.type_name == type_name


@pytest.mark.parametrize(
    ("type_name", "wrong", "message"),
    [
        ("mlp", {"hidden": ["32"]}, r"hidden\[0\]: should be a valid integer, got '32'"),
        (
            "cnn",
            {"observation": {"pixels": {"shape": [24, 24.0, 3], "dtype": "uint8"}}},
            r"observation\.pixels\.shape\[1\]: ",
        ),
        ("sac_actor", {"action_low": "-1"}, r"action_low: should be a list, got '-1'"),
        ("lora", {"rank": 2.0}, r"rank: should be a valid integer, got 2\.0"),
    ],
)
def test_each_config_refuses_an_unknown_key_and_a_wrong_type_with_the_field_path(type_name, wrong, message) -> None:
    config_class, good = CLASSES[type_name], CONFIGS[type_name]
    with pytest.raises(ConfigError, match=rf"^{type_name}\.colour: unknown key; known: "):
        config_class(**good, colour="red")
    with pytest.raises(ConfigError, match=rf"^{type_name}\.colour: unknown key"):
        make_policy(type_name, {**good, "colour": "red"})
    with pytest.raises(ConfigError, match=rf"^{type_name}\.{message}"):
        config_class(**{**good, **wrong})
    with pytest.raises(ConfigError, match=rf"^{type_name}\.{message}"):
        make_policy(type_name, {**good, **wrong})


@pytest.mark.parametrize(
    ("type_name", "change", "message"),
    [
        ("mlp", {"observation": IMAGE}, r"^mlp\.observation: needs at least one non-image observation$"),
        ("mlp", {"observation": {}}, r"^mlp\.observation: needs at least one non-image observation$"),
        ("mlp", {"chunk_size": 0}, r"^mlp\.chunk_size: should be greater than or equal to 1, got 0$"),
        ("cnn", {"observation": STATE}, r"^cnn\.observation: needs at least one uint8 \(H, W, C\) image observation$"),
        ("cnn", {"channels": []}, r"^cnn\.channels: "),
        ("cnn", {"image_features": 0}, r"^cnn\.image_features: should be greater than or equal to 1, got 0$"),
        ("sac_actor", {"observation": {}}, r"^sac_actor\.observation: needs at least one observation$"),
        ("sac_actor", {"chunk_size": 2}, r"^sac_actor\.chunk_size: must be 1, got 2$"),
        ("sac_actor", {"action_low": [0]}, r"^sac_actor\.action_low: expected 2 values, got \[0\.0\]$"),
        (
            "sac_actor",
            {"action_high": [1, 0]},
            r"^sac_actor\.action_high\[1\]: 0\.0 must exceed action_low\[1\] = 0\.0$",
        ),
        ("lora", {"rank": 0}, r"^lora\.rank: should be greater than or equal to 1, got 0$"),
        ("lora", {"base_type": "nope"}, r"^lora\.base_type: unknown policy type 'nope'"),
        ("lora", {"min_features": 1000}, r"^lora\.min_features: the mlp policy has no linear layer with >= 1000"),
    ],
)
def test_the_checks_the_constructors_did_name_their_field(type_name, change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make_policy(type_name, {**CONFIGS[type_name], **change})


def test_config_dicts_keep_their_shape_and_rebuild_the_same_policy() -> None:
    """The dict saved in weights: JSON types (lists, floats), every field; ``updates`` compares it as JSON text."""
    actor = SACActorPolicy(SACActorConfig(**CONFIGS["sac_actor"]))
    assert actor.config_dict() == {
        "observation": STATE,
        "action_dim": 2,
        "chunk_size": 1,
        "hidden": [8],
        "action_levels": [],
        "channels": [16, 32, 32],
        "image_features": 64,
        "action_low": [-1.0, 0.0],
        "action_high": [1.0, 2.0],
        "explore": False,
    }
    cnn = CNNPolicy(CNNConfig(**CONFIGS["cnn"]))
    assert set(cnn.config_dict()) == {
        "observation",
        "action_dim",
        "chunk_size",
        "hidden",
        "action_levels",
        "channels",
        "image_features",
    }
    lora = LoraPolicy.around(MLPPolicy(MLPConfig(**MLP)), rank=2)
    assert lora.config_dict() == {
        "base_type": "mlp",
        "base_config": {**MLP, "chunk_size": 1, "action_levels": []},
        "rank": 2,
        "alpha": 16.0,
        "min_features": 16,
    }
    for policy in (actor, cnn, lora):
        assert json.dumps(policy_from_bytes(policy_to_bytes(policy)).config_dict(), sort_keys=True) == json.dumps(
            policy.config_dict(), sort_keys=True
        )
