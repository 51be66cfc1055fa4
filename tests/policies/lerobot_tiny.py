"""Tiny lerobot ACT and diffusion configs for tests: random weights, no pretrained backbone, nothing downloaded."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the hub

TINY_ACT = {
    "dim_model": 32,
    "n_heads": 2,
    "dim_feedforward": 64,
    "n_encoder_layers": 1,
    "n_decoder_layers": 1,
    "n_vae_encoder_layers": 1,
    "latent_dim": 8,
    "chunk_size": 5,
    "n_action_steps": 5,
    "vision_backbone": "resnet18",
    "pretrained_backbone_weights": None,  # lerobot's default would download ImageNet weights
}

TINY_DIFFUSION = {
    "n_obs_steps": 1,
    "horizon": 8,
    "n_action_steps": 4,
    "down_dims": [16, 32],
    "n_groups": 4,
    "kernel_size": 3,
    "diffusion_step_embed_dim": 16,
    "spatial_softmax_num_keypoints": 8,
    "use_group_norm": True,
    "pretrained_backbone_weights": None,
    "num_train_timesteps": 50,
    "num_inference_steps": 4,
}

TINY = {"act": TINY_ACT, "diffusion": TINY_DIFFUSION}


def fit_data_for_spec(
    observation: dict[str, dict], low: np.ndarray, high: np.ndarray, n: int = 32, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random observations and actions in the action's range: enough to give an untrained policy statistics."""
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {}
    for name, spec in observation.items():
        shape = (n, *spec["shape"])
        if spec["dtype"] == "uint8":
            data[f"obs.{name}"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            data[f"obs.{name}"] = rng.uniform(low.min(), high.max(), size=shape).astype(spec["dtype"])
    data["action"] = rng.uniform(low, high, size=(n, len(low))).astype(np.float32)
    return data
