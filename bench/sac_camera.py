"""(h) SAC from pixels: can the learner's SAC find a goal that only its camera shows?

The point-reach task (``hal.reach_sim``) as a robot whose policy sees the point's position and a 16x16 camera
over the arena (the goal a red patch, the point a green one); the goal is nowhere else. The scripted operator
sees everything and takes over when the policy drifts (HG-DAgger style), as in the state-only SAC test. The real
learner (``algorithm="sac"``, actor and critics each with their own small CNN, robots sampling from the actor)
trains a version after every round of episodes. The figure is the autonomous success of the last versions with
that camera, against the same run with the goal left out of the image (the baseline: what the policy can do
without reading the goal from pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import HIGHER, Result

SIZE = 16
EVAL_SEEDS = range(1000, 1040)


def camera(state: np.ndarray, show_goal: bool = True, size: int = SIZE) -> np.ndarray:
    """The arena seen from above: the goal as a red patch (unless hidden), the point as a green one; each patch
    an eighth of the side (2x2 at 16x16)."""
    image = np.zeros((size, size, 3), np.uint8)
    patch = max(2, size // 8)
    marks = [(state[2:4], 0)] if show_goal else []
    for (x, y), channel in [*marks, (state[0:2], 1)]:
        col, row = (
            int(np.clip((x + 1) / 2 * (size - 1), 0, size - patch)),
            int(np.clip((1 - y) / 2 * (size - 1), 0, size - patch)),
        )
        image[row : row + patch, col : col + patch, channel] = 255
    return image


def seen(observation: dict[str, np.ndarray], show_goal: bool = True, size: int = SIZE) -> dict[str, np.ndarray]:
    """What the policy gets: the point's position, and the goal only through the camera."""
    state = observation["state"]
    return {"state": state[:2].copy(), "camera": camera(state, show_goal, size)}


def episode_columns(rows: list[tuple], version: int) -> dict[str, np.ndarray]:
    """An episode's columns from its (seen, action, transition, intervention) rows."""
    return {
        "obs.state": np.stack([r[0]["state"] for r in rows]),
        "obs.camera": np.stack([r[0]["camera"] for r in rows]),
        "action": np.stack([r[1] for r in rows]).astype(np.float32),
        "reward": np.array([r[2].reward for r in rows], np.float32),
        "done": np.array([r[2].done for r in rows]),
        "success": np.array([r[2].success for r in rows]),
        "intervention": np.array([r[3] for r in rows]),
        "policy_version": np.full(len(rows), version, np.int64),
        "t_mono_ns": np.arange(len(rows), dtype=np.int64),
    }


def autonomous_success(policy, show_goal: bool, size: int = SIZE) -> float:
    """The share of the evaluation episodes (EVAL_SEEDS) the policy finishes alone."""
    from hal.reach_sim import PointReachEnv

    wins = 0
    for eval_seed in EVAL_SEEDS:
        env = PointReachEnv()
        observation, _ = env.reset(seed=eval_seed)
        for _ in range(env.max_steps):
            action = policy.act(seen(observation, show_goal, size))[0]
            observation, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        wins += bool(info["is_success"])
    return wins / len(EVAL_SEEDS)


def learning_curve(
    workdir: Path, rounds: int, train_steps: int, show_goal: bool = True, seed: int = 0, episodes_per_round: int = 5
) -> tuple[list[float], object]:
    """Autonomous success of each version the learner publishes, and the last published actor."""
    import torch

    from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
    from cloud.data.version_registry import PolicyRegistry
    from cloud.learning.algorithms.sac_agent import SACConfig
    from cloud.learning.config import LearnerConfig
    from cloud.learning.learner import Learner
    from edge.operator import HGDaggerOperator, TakeoverRule
    from hal.reach_sim import ReachExpert, ReachRobot
    from policies.weights import policy_from_bytes
    from protocol.steps import schema_for

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = EpisodeStore(workdir / "store", durable=False)
    try:
        schema = schema_for([("state", "float32", (2,)), ("camera", "uint8", (SIZE, SIZE, 3))], ("float32", (2,)))
        store.ensure_dataset("point_reach", {name: ColumnSpec(*spec) for name, spec in schema.items()})
        registry = PolicyRegistry(workdir / "registry")
        config = LearnerConfig(
            algorithm="sac",
            first_round_episodes=2,
            round_episodes=episodes_per_round,
            train_steps=train_steps,
            batch_size=128,
            hidden=(64, 64),
            sac=SACConfig(critic_hidden=(64, 64)),
            seed=seed,
        )
        learner = Learner(store, registry, config, checkpoint_dir=workdir / "checkpoint")
        robot = ReachRobot(seed=seed)
        operator = HGDaggerOperator(ReachExpert(), TakeoverRule(takeover_distance=1.0, deadline_step=20))
        policy, version, episodes, success = None, 0, 0, []

        def episode() -> dict[str, np.ndarray]:
            observation, rows = robot.reset(), []
            operator.reset()
            for step in range(100):
                policy_action = policy.act(seen(observation, show_goal))[0] if policy is not None else None
                action, intervention = operator.decide(observation, policy_action, step)  # the person sees all
                transition = robot.apply(action)
                rows.append((seen(observation, show_goal), action, transition, intervention))
                observation = transition.observation
                if transition.done:
                    break
            return episode_columns(rows, version)

        for _ in range(rounds):
            for columns in [episode() for _ in range(2 if policy is None else episodes_per_round)]:
                store.write([StepRows("point_reach", f"ep{episodes}", "reach-1", "sim", "point_reach", 0, columns)])
                episodes += 1
            [published] = learner.poll_once()
            version = published.version
            policy = policy_from_bytes(registry.read("point_reach", version))
            success.append(autonomous_success(policy, show_goal))
        return success, policy
    finally:
        store.close()
        torch.set_num_threads(threads)


def measure(workdir: Path, rounds: int = 8, train_steps: int = 500, say: Callable[[str], None] = print) -> list[Result]:
    curves = {}
    for show_goal in (True, False):
        name = "camera shows the goal" if show_goal else "goal left out of the image (baseline)"
        curves[show_goal], _ = learning_curve(workdir / f"camera-{show_goal}", rounds, train_steps, show_goal)
        say(f"SAC from pixels, {name}: autonomous success per version {curves[show_goal]}")
    last = {k: float(np.mean(v[-3:])) for k, v in curves.items()}
    note = f"{HIGHER}; mean of the last 3 of {rounds} versions, {train_steps} updates each"
    return [
        Result(
            "(h) SAC autonomous success, goal only in a 16x16 camera (vs not shown)", last[True], "", last[False], note
        )
    ]
