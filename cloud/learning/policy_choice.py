"""Which policy the learner trains for a dataset: built from the dataset's schema and ``LearnerConfig.policies``."""

from __future__ import annotations

import numpy as np

from cloud.data.policy_import import observation_spec
from cloud.learning.config import BUILTIN_POLICY_TYPES
from policies.base import Policy
from policies.factory import make_policy
from policies.lerobot_policy import LerobotPolicy


def policy_for_schema(
    schema: dict, hidden: tuple[int, ...], chunk_size: int = 1, policy_type: str = "auto", fields: dict | None = None
) -> Policy:
    """``auto``: an MLP for vector observations, a small CNN when any observation is a uint8 image; ``mlp`` or
    ``cnn``; else a lerobot policy of that type with ``fields`` for its config (random weights; without images
    the observations go in as lerobot's ``observation.state`` and ``observation.environment_state``)."""
    observation = observation_spec(schema)
    action_dim = int(np.prod(schema["action"].shape))
    has_image = any(o["dtype"] == "uint8" and len(o["shape"]) == 3 for o in observation.values())
    if policy_type not in BUILTIN_POLICY_TYPES:
        # lerobot's vision policies need an image or an environment state (and ACT's VAE a robot state): a robot
        # without cameras feeds its vectors as both.
        names = sorted(observation)
        inputs = None if has_image else {"observation.state": names, "observation.environment_state": names}
        return LerobotPolicy(observation, action_dim, policy_type, fields or {}, inputs=inputs)
    policy_type = ("cnn" if has_image else "mlp") if policy_type == "auto" else policy_type
    config = {"observation": observation, "action_dim": action_dim, "chunk_size": chunk_size, **(fields or {})}
    if policy_type == "mlp":
        config.setdefault("hidden", list(hidden))
    return make_policy(policy_type, config)
