"""Weight updates: deltas carry only what changed, the edge's rebuild is verified, bf16 halves the bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hal.config import ConfigError
from policies.factory import make_policy
from policies.lerobot_policy import LerobotPolicy
from policies.lora import LoraConfig, LoraPolicy
from policies.train import train_policy
from policies.updates import HeldState, UpdateError, WireState, apply_update, build_update
from policies.weights import policy_to_bytes

OBSERVATION = {"state": {"shape": [21], "dtype": "float32"}}


def lora_policy(hidden: list[int], rank: int = 4) -> LoraPolicy:
    base = {"observation": OBSERVATION, "action_dim": 4, "chunk_size": 1, "hidden": hidden}
    return LoraPolicy(LoraConfig(base_type="mlp", base_config=base, rank=rank))


def demos(n: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = rng.normal(size=(n, 21)).astype(np.float32)
    return {"obs.state": state, "action": np.tanh(state[:, :4] * 2).astype(np.float32)}


def observation() -> dict[str, np.ndarray]:
    return {"state": np.linspace(-1, 1, 21, dtype=np.float32)}


def held_after(payload: bytes, held: dict[int, HeldState] | None = None):
    policy, state = apply_update(payload, held)
    return policy, {state.version: state}


def test_lora_training_changes_only_adapters_and_a_delta_is_a_small_share_of_the_model() -> None:
    policy = lora_policy([512, 512])
    frozen = {
        k: v.clone() for k, v in policy.state_dict().items() if "lora_" not in k and not k.endswith(("_mean", "_std"))
    }
    v1 = WireState.from_weights(policy_to_bytes(policy), 1)
    train_policy(policy, demos(), steps=30, batch_size=64)
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in frozen.items()), "a frozen weight changed"
    v2 = WireState.from_weights(policy_to_bytes(policy), 2)

    full = build_update(v1)
    delta = build_update(v2, base=v1)
    assert (full.kind, delta.kind, delta.base_version) == ("full", "delta", 1)
    assert delta.sent_tensor_bytes < 0.05 * delta.full_tensor_bytes
    assert len(delta.payload) < 0.05 * len(full.payload)

    edge_v1, held = held_after(full.payload)
    edge_v2, held2 = held_after(delta.payload, held)
    np.testing.assert_array_equal(edge_v2.act(observation()), policy.act(observation()))
    assert not np.array_equal(edge_v1.act(observation()), edge_v2.act(observation()))
    # Unchanged tensors are shared with the held version, not copied.
    name = next(k for k in frozen if k.endswith("base.weight"))
    assert held2[2].tensors[name].data_ptr() == held[1].tensors[name].data_ptr()


def test_a_delta_against_a_version_the_edge_lacks_or_corrupted_is_refused() -> None:
    policy = lora_policy([64, 64])
    v1 = WireState.from_weights(policy_to_bytes(policy), 1)
    train_policy(policy, demos(), steps=5, batch_size=32)
    v2 = WireState.from_weights(policy_to_bytes(policy), 2)
    train_policy(policy, demos(seed=1), steps=5, batch_size=32, fit_normalization=False)
    v3 = WireState.from_weights(policy_to_bytes(policy), 3)
    _, held = held_after(build_update(v1).payload)
    with pytest.raises(UpdateError, match="update.base_version: a delta against v2"):
        apply_update(build_update(v3, base=v2).payload, held)
    # What the edge holds as "v1" is another model of the same architecture: the rebuilt state has the wrong digest.
    _, impostor = held_after(build_update(WireState.from_weights(policy_to_bytes(lora_policy([64, 64])), 1)).payload)
    with pytest.raises(UpdateError, match="update.state_sha256"):
        apply_update(build_update(v2, base=v1).payload, impostor)
    # A tensor damaged after the update was built (the chunks' sha256 covers transit, this covers the rest).
    payload = bytearray(build_update(v2, base=v1).payload)
    payload[-1] ^= 0xFF
    with pytest.raises(UpdateError, match="update.state_sha256"):
        apply_update(bytes(payload), held)
    assert apply_update(build_update(v2, base=v1).payload, held)[1].version == 2


def test_full_snapshot_when_the_architecture_changed_or_the_delta_is_too_big() -> None:
    small = make_policy("mlp", {"observation": OBSERVATION, "action_dim": 4, "chunk_size": 1, "hidden": [16]})
    other = make_policy("mlp", {"observation": OBSERVATION, "action_dim": 4, "chunk_size": 1, "hidden": [32]})
    v1 = WireState.from_weights(policy_to_bytes(small), 1)
    v2 = WireState.from_weights(policy_to_bytes(other), 2)
    assert build_update(v2, base=v1).kind == "full"
    retrained = make_policy("mlp", small.config_dict())  # every tensor differs
    v3 = WireState.from_weights(policy_to_bytes(retrained), 3)
    update = build_update(v3, base=v1)
    assert update.kind == "full"
    policy, _ = apply_update(update.payload, None)
    held, sent = policy.state_dict(), retrained.state_dict()
    assert held.keys() == sent.keys() and all(torch.equal(held[k], sent[k]) for k in sent)
    # The same weights, to the last bit; the edge's tensors view the payload in place, and at that alignment the
    # matrix product may take another SIMD path: the actions agree to float32 rounding.
    np.testing.assert_allclose(policy.act(observation()), retrained.act(observation()), rtol=1e-6, atol=1e-7)


def test_bfloat16_on_the_wire_halves_the_bytes_and_stays_close() -> None:
    policy = lora_policy([256, 256])
    train_policy(policy, demos(), steps=10, batch_size=32)
    weights = policy_to_bytes(policy)
    f32 = build_update(WireState.from_weights(weights, 1))
    bf16 = build_update(WireState.from_weights(weights, 1, wire_dtype="bfloat16"))
    assert bf16.sent_tensor_bytes == pytest.approx(f32.sent_tensor_bytes / 2, rel=0.01)
    edge_policy, held = held_after(bf16.payload)
    assert all(t.dtype == torch.float32 for t in held[1].tensors.values())
    np.testing.assert_allclose(edge_policy.act(observation()), policy.act(observation()), atol=0.05)
    with pytest.raises(ValueError, match="wire_dtype"):
        WireState.from_weights(weights, 1, wire_dtype="float8")


def test_garbage_is_refused_with_a_named_field() -> None:
    with pytest.raises(UpdateError, match="^update"):
        apply_update(b"\x00" * 64)


def test_lora_around_a_trained_policy_keeps_its_behaviour() -> None:
    base = make_policy("mlp", {"observation": OBSERVATION, "action_dim": 4, "chunk_size": 1, "hidden": [64, 64]})
    train_policy(base, demos(), steps=20, batch_size=32)
    wrapped = LoraPolicy.around(base, rank=2)
    np.testing.assert_allclose(wrapped.act(observation()), base.act(observation()), rtol=1e-6, atol=1e-6)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ConfigError, match=r"^lora\.rank: should be greater than or equal to 1, got 0$"):
        LoraConfig(base_type="mlp", base_config=base.config_dict(), rank=0)


def test_a_version_signed_for_float32_only_travels_as_float32_and_applies() -> None:
    """A gateway that sends bf16 sends a version the learner signed for float32 alone as float32 (an edge could not
    check its bf16 tensors); one signed for bf16 travels as bf16, and both pass the edge's check."""
    from policies.signing import Signer

    signer = Signer.generate()
    weights = policy_to_bytes(make_policy("mlp", {"observation": OBSERVATION, "action_dim": 4, "hidden": [64]}))
    for wires, dtype in ((("float32",), torch.float32), (("float32", "bfloat16"), torch.bfloat16)):
        signed = signer.sign(weights, "pick", 1, wires)
        state = WireState.from_weights(signed, 1, wire_dtype="bfloat16")
        assert {t.dtype for t in state.tensors.values()} == {dtype}
        _, held = apply_update(build_update(state).payload)
        assert held.version == 1
    with pytest.raises(ValueError, match="wire_dtypes"):
        signer.sign(weights, "pick", 1, ("float8",))


def test_lora_around_a_lerobot_act_adapts_its_linear_layers_and_leaves_torch_attention_whole() -> None:
    """ACT's transformer uses nn.MultiheadAttention, which reads its output projection's weight directly: that
    projection must stay an nn.Linear, or the forward pass fails."""
    from tests.policies.lerobot_tiny import TINY, fit_data_for_spec

    observation = {"state": {"shape": [4], "dtype": "float32"}, "image": {"shape": [32, 32, 3], "dtype": "uint8"}}
    base = LerobotPolicy(observation, 2, "act", TINY["act"])
    base.fit_normalization(fit_data_for_spec(observation, -np.ones(2, np.float32), np.ones(2, np.float32)))
    wrapped = LoraPolicy.around(base.eval(), rank=2).eval()
    assert wrapped.adapted_layers > 0
    assert all(
        isinstance(m.out_proj, torch.nn.Linear) for m in wrapped.modules() if isinstance(m, torch.nn.MultiheadAttention)
    )
    obs = {"state": np.zeros(4, np.float32), "image": np.zeros((32, 32, 3), np.uint8)}
    base.reset()
    np.testing.assert_allclose(wrapped.act(obs), base.act(obs), atol=1e-5)  # adapters start at zero
