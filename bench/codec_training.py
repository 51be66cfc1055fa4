"""(n) codec-training: does a policy trained from H.264-decoded frames do as well as one trained from raw frames?

The sac-camera bench's task (``hal.reach_sim``: the goal only in a camera over the arena), at 64x64 so the store's
automatic codec is H.264. The scripted operator demonstrates episodes; the same episodes go into two episode stores,
one keeping the camera raw, one as H.264 (``ColumnSpec(codec="h264")``, each episode encoded as an edge encodes it,
a keyframe opening it). The real learner (hg-dagger, its CNN, camera frames read through its streaming dataset and
decoded there) trains one version from each with the same seed and budget. Figures: the version's autonomous
success on the evaluation seeds, and its mean action error against the operator on held-out episodes (raw frames),
H.264 vs raw.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import HIGHER, LOWER, Result
from bench.sac_camera import autonomous_success, episode_columns, seen

SIZE = 64
DATASET = "point_reach"
FPS = 10.0


def demonstrations(episodes: int, seed: int) -> list[dict[str, np.ndarray]]:
    """The scripted operator's episodes, as steps' columns, the goal only in the 64x64 camera."""
    from edge.operator import HGDaggerOperator
    from hal.reach_sim import ReachExpert, ReachRobot

    robot, operator = ReachRobot(seed=seed), HGDaggerOperator(ReachExpert())
    out = []
    for _ in range(episodes):
        observation, rows = robot.reset(), []
        operator.reset()
        for step in range(100):
            action, intervention = operator.decide(observation, None, step)
            transition = robot.apply(action)
            rows.append((seen(observation, size=SIZE), action, transition, intervention))
            observation = transition.observation
            if transition.done:
                break
        out.append(episode_columns(rows, 0))
    return out


def _encoded(frames: np.ndarray) -> Any:
    """One episode's camera as H.264 packets, as an edge's encoder makes them."""
    from protocol.video import CameraEncoder, PacketColumn

    encoder = CameraEncoder("h264", SIZE, SIZE, FPS)
    packets = [p for frame in frames for p in encoder.encode(frame)] + encoder.flush()
    return PacketColumn("h264", tuple(p.data for p in packets), np.array([p.keyframe for p in packets]))


def fill_store(root: Path, codec: str, episodes: list[dict[str, np.ndarray]]) -> int:
    """The episodes in a new store whose camera is kept ``codec`` ("raw" or "h264"); returns its stored bytes."""
    from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
    from protocol.steps import schema_for

    schema = schema_for([("state", "float32", (2,)), ("camera", "uint8", (SIZE, SIZE, 3))], ("float32", (2,)))
    specs = {name: ColumnSpec(*spec) for name, spec in schema.items()}
    if codec != "raw":
        specs["obs.camera"] = ColumnSpec(*schema["obs.camera"], codec=codec)
    store = EpisodeStore(root / "store", durable=False)
    try:
        store.ensure_dataset(DATASET, specs)
        for i, columns in enumerate(episodes):
            if codec != "raw":
                columns = {**columns, "obs.camera": _encoded(columns["obs.camera"])}
            store.write([StepRows(DATASET, f"ep{i}", "reach-1", "sim", DATASET, 0, columns)])
    finally:
        store.close()
    return sum(f.stat().st_size for f in (root / "store").rglob("*") if f.is_file())


def train(root: Path, episodes: int, train_steps: int, seed: int) -> Any:
    """One version from the store under ``root`` by the real learner; returns the published policy."""
    import torch

    from cloud.data.store import EpisodeStore
    from cloud.data.version_registry import PolicyRegistry
    from cloud.learning.config import LearnerConfig
    from cloud.learning.learner import Learner
    from policies.weights import policy_from_bytes

    torch.manual_seed(seed)
    store = EpisodeStore(root / "store", durable=False)
    try:
        registry = PolicyRegistry(root / "registry")
        config = LearnerConfig(
            first_round_episodes=episodes,
            train_steps=train_steps,
            batch_size=64,
            hidden=(64, 64),
            seed=seed,
            loader_workers=0,  # same seed, same batches: decoding in the learner's thread keeps both runs in step
        )
        learner = Learner(store, registry, config, checkpoint_dir=root / "checkpoint")
        [published] = learner.poll_once()
        return policy_from_bytes(registry.read(DATASET, published.version))
    finally:
        store.close()


def action_error(policy: Any, held_out: list[dict[str, np.ndarray]]) -> float:
    """Mean distance between the policy's action and the operator's, over held-out steps with raw frames."""
    errors = []
    for episode in held_out:
        for state, frame, action in zip(episode["obs.state"], episode["obs.camera"], episode["action"], strict=True):
            errors.append(float(np.linalg.norm(policy.act({"state": state, "camera": frame})[0] - action)))
    return float(np.mean(errors))


def measure(
    workdir: Path, episodes: int = 40, train_steps: int = 600, seed: int = 0, say: Callable[[str], None] = print
) -> list[Result]:
    import torch

    say(f"codec-training: {episodes} demonstrations at {SIZE}x{SIZE}, stored raw and as H.264")
    demos = demonstrations(episodes + 5, seed)
    train_demos, held_out = demos[:episodes], demos[episodes:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    scores: dict[str, tuple[float, float, int]] = {}
    try:
        for codec in ("raw", "h264"):
            stored = fill_store(workdir / f"codec-training-{codec}", codec, train_demos)
            policy = train(workdir / f"codec-training-{codec}", episodes, train_steps, seed)
            scores[codec] = (autonomous_success(policy, True, SIZE), action_error(policy, held_out), stored)
            say(
                f"  {codec}: success {scores[codec][0]:.2f}, held-out action error {scores[codec][1]:.4f}, "
                f"store {stored / 1e6:.2f} MB"
            )
    finally:
        torch.set_num_threads(threads)
    note = f"same {episodes} demonstrations, seed {seed}, {train_steps} updates; hg-dagger CNN"
    (ours_s, ours_e, _), (raw_s, raw_e, _) = scores["h264"], scores["raw"]
    return [
        Result(
            "codec-training: autonomous success, trained from H.264 frames (vs raw)",
            ours_s,
            "",
            raw_s,
            f"{HIGHER}; {note}",
        ),
        Result("codec-training: held-out action error, H.264 (vs raw)", ours_e, "", raw_e, f"{LOWER}; {note}"),
    ]
