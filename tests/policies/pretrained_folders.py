"""lerobot ``pretrained_model`` folders as a lab has them, made here: tiny random policies saved by lerobot itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hal.sim import SIM_TASKS
from policies.lerobot_policy import LerobotPolicy
from policies.mlp import MLPConfig, MLPPolicy
from tests.policies.lerobot_tiny import TINY, fit_data_for_spec

PANDA = "panda_pick_cube"


def sim_observation(task: str) -> dict[str, dict[str, Any]]:
    return {s.name: {"shape": list(s.shape), "dtype": s.dtype} for s in SIM_TASKS[task].observation}


def tiny_act(
    observation: dict[str, dict[str, Any]],
    action_dim: int,
    inputs: dict[str, list[str]] | None = None,
    seed: int = 0,
    **config: Any,
) -> LerobotPolicy:
    """A tiny ACT with random weights and statistics of random data in [-1, 1] (no camera: the state feeds lerobot's
    state and environment state, as fleetloop's learner feeds a camera-less robot)."""
    torch.manual_seed(seed)
    if inputs is None and not any(s["dtype"] == "uint8" for s in observation.values()):
        names = sorted(observation)
        inputs = {"observation.state": names, "observation.environment_state": names}
    policy = LerobotPolicy(observation, action_dim, "act", {**TINY["act"], **config}, inputs=inputs)
    low, high = -np.ones(action_dim, np.float32), np.ones(action_dim, np.float32)
    policy.fit_normalization(fit_data_for_spec(observation, low, high, seed=seed))
    return policy.eval()


def small_mlp(observation: dict[str, dict[str, Any]], hidden: int = 16, action_dim: int = 4) -> MLPPolicy:
    """A fleetloop MLP with one hidden layer, random weights."""
    return MLPPolicy(MLPConfig(observation=observation, action_dim=action_dim, hidden=(hidden,)))


def save_pretrained(policy: LerobotPolicy, folder: Path) -> Path:
    """As lerobot-train saves a checkpoint's pretrained_model: the policy (config.json, model.safetensors) and both
    processors (their JSON and the statistics beside them)."""
    policy.model.save_pretrained(folder)
    policy.preprocessor.save_pretrained(folder)
    policy.postprocessor.save_pretrained(folder)
    return folder


def panda_act_folder(folder: Path, seed: int = 0, **config: Any) -> Path:
    """A lab's ACT for the simulated Panda (21 state values in, 4 actions out)."""
    return save_pretrained(tiny_act(sim_observation(PANDA), 4, seed=seed, **config), folder)


def edit_json(path: Path, change: Any) -> None:
    """``change(data)`` edits the parsed JSON in place; the file is written back."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
