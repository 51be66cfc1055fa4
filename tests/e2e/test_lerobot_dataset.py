"""Data interop end to end: `fleetloop export` -> lerobot's LeRobotDataset and `lerobot-train`; a LeRobotDataset
through `fleetloop import` seeds the HG-DAgger learner. Every step is a real command on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
from cloud.data.version_registry import PolicyRegistry
from cloud.learning.config import LearnerConfig
from cloud.learning.learner import HGDaggerLearner
from policies.weights import policy_from_bytes
from protocol.steps import schema_for
from protocol.video import CameraEncoder, PacketColumn

LENGTHS = (9, 8, 10, 7)


def offline_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_LEROBOT_HOME": str(tmp_path / "hf-lerobot"),  # nothing lands in the user's cache
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.getcwd(),
    }


def fleetloop(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", *args],
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )


def robot_store(root: Path, codec: str = "") -> int:
    """A pusht-like dataset: a 32x32 camera (raw, or stored as ``codec`` packets), a 2-d state and action, two
    robots, some steps operator-driven."""
    schema = schema_for([("pixels", "uint8", (32, 32, 3)), ("state", "float32", (2,))], ("float32", (2,)))
    specs = {k: ColumnSpec(d, s, codec if k == "obs.pixels" else "") for k, (d, s) in schema.items()}
    with EpisodeStore(root) as store:
        store.ensure_dataset("pusht", specs)
        rng = np.random.default_rng(1)
        for index, n in enumerate(LENGTHS):
            state = rng.uniform(0, 1, (n, 2)).astype(np.float32)
            columns = {
                "obs.pixels": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                "obs.state": state,
                "action": (state * 2 - 1).astype(np.float32),
                "reward": np.zeros(n, np.float32),
                "done": np.arange(n) == n - 1,
                "success": np.arange(n) == n - 1,
                "intervention": np.arange(n) < 3,  # the operator drove the first 3 steps only
                "policy_version": np.full(n, index, np.int64),
                "t_mono_ns": np.arange(n, dtype=np.int64) * 100_000_000,  # 10 Hz
            }
            resource = f"pusht-{index % 2 + 1}"
            if codec:
                encoder = CameraEncoder(codec, 32, 32, 10)
                coded = [p for frame in columns["obs.pixels"] for p in encoder.encode(frame)] + encoder.flush()
                columns["obs.pixels"] = PacketColumn(
                    codec, tuple(p.data for p in coded), np.array([p.keyframe for p in coded])
                )
            store.write([StepRows("pusht", f"ep-{index}", resource, "sim", "push the T", 0, columns)])
        return store.committed_rows("pusht")


@pytest.mark.parametrize("codec", ["", "h264"], ids=["raw-camera", "h264-camera"])
def test_export_trains_with_lerobot_and_import_seeds_the_learner(tmp_path, codec: str) -> None:
    """With an H.264 camera the export's video file is the stored packets, and the import keeps them."""
    rows = robot_store(tmp_path / "data" / "store", codec)
    out = tmp_path / "pusht-lerobot"

    # 1. `fleetloop export` of the cloud's data folder, read back by lerobot's own LeRobotDataset
    done = fleetloop(tmp_path, "export", "--root", str(tmp_path / "data"), "--dataset", "pusht", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exported 4 episodes (34 frames, 10 fps from the step timestamps)" in done.stderr
    assert ("the stored packets, not re-encoded: obs.pixels (h264)" in done.stderr) == bool(codec)
    dataset = LeRobotDataset("fleetloop/pusht", root=out)
    assert (dataset.num_episodes, dataset.num_frames, dataset.fps) == (4, rows, 10)
    assert [int(e["length"]) for e in dataset.meta.episodes] == list(LENGTHS)
    assert sorted(set(dataset.hf_dataset["resource_id"])) == ["pusht-1", "pusht-2"]
    assert dataset.features["observation.images.pixels"]["dtype"] == ("video" if codec else "image")

    # 2. lerobot-train on it: a tiny ACT, nothing downloaded, three steps, a checkpoint written
    train_dir = tmp_path / "train"
    train = subprocess.run(
        [
            str(Path(sys.executable).with_name("lerobot-train")),
            "--dataset.repo_id=fleetloop/pusht",
            f"--dataset.root={out}",
            "--policy.type=act",
            "--policy.device=cpu",
            "--policy.push_to_hub=false",
            "--policy.pretrained_backbone_weights=null",
            "--policy.dim_model=32",
            "--policy.dim_feedforward=64",
            "--policy.n_heads=2",
            "--policy.n_encoder_layers=1",
            "--policy.n_decoder_layers=1",
            "--policy.n_vae_encoder_layers=1",
            "--policy.latent_dim=8",
            "--policy.chunk_size=4",
            "--policy.n_action_steps=4",
            f"--output_dir={train_dir}",
            "--batch_size=2",
            "--num_workers=0",
            "--steps=3",
            "--log_freq=1",
            "--save_freq=3",
            "--env_eval_freq=0",
            "--wandb.enable=false",
        ],
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    log = train.stdout + train.stderr
    assert train.returncode == 0, log[-4000:]
    assert f"dataset.num_frames={rows}" in log and "step:3 " in log
    model = train_dir / "checkpoints" / "000003" / "pretrained_model"
    assert (model / "model.safetensors").stat().st_size > 0
    config = json.loads((model / "config.json").read_text())
    assert set(config["input_features"]) == {"observation.images.pixels", "observation.state"}
    assert config["output_features"]["action"]["shape"] == [2]

    # 3. `fleetloop import` of that dataset into a fresh cloud data folder, twice: the second adds nothing
    fresh = tmp_path / "fresh"
    for attempt in range(2):
        done = fleetloop(tmp_path, "import", "--root", str(fresh), "--from", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        expected = f"imported 4 episodes ({rows} steps)" if attempt == 0 else "imported 0 episodes (0 steps)"
        assert expected in done.stderr, done.stderr
        assert ("not decoded: observation.images.pixels (h264)" in done.stderr) == bool(codec)
    assert not (fresh / "zarr.json").exists()  # no second store beside the one the cloud reads
    store = EpisodeStore(fresh / "store")
    assert store.committed_rows("pusht") == rows
    assert store.schema("pusht")["obs.pixels"].codec == codec  # an H.264 camera stays H.264, never decoded
    assert {(e.source, e.resource_id, e.done) for e in store.episodes("pusht")} == {
        ("import", "import:fleetloop/pusht", True)
    }

    # 4. the imported demonstrations seed the learner: its first version trains on every imported step
    registry = PolicyRegistry(fresh / "registry")
    learner = HGDaggerLearner(store, registry, LearnerConfig(first_round_episodes=2, train_steps=20, batch_size=8))
    [version] = learner.poll_once()
    assert version.version == 1 and registry.latest("pusht").version == 1
    assert f"on {rows} labelled steps, 4 episodes" in version.note  # not just the 12 the operator drove
    policy = policy_from_bytes(registry.read("pusht", 1))
    frame = store.read("pusht", ["obs.pixels", "obs.state"], start=0, stop=1)
    action = policy.act({"pixels": frame["obs.pixels"][0], "state": frame["obs.state"][0]})
    assert np.asarray(action).reshape(-1).shape == (2,)
    store.close()

    # a second import with the store held by another writer (a running cloud) is refused by flag
    with EpisodeStore(fresh / "store"):
        done = fleetloop(tmp_path, "import", "--root", str(fresh), "--from", str(out))
    assert done.returncode == 2 and "import: --root: another process writes" in done.stderr
