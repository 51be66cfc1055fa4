"""(r) adapter-push: bytes pushed per version in the real loop when the learner trains LoRA adapters only.

`fleetloop cloud --no-learner`, a simulated Panda (`fleetloop edge`, its scripted operator recording) and
`fleetloop learner --init panda_pick_cube=<lab ACT> --adapters panda_pick_cube=8`, each a process, as a user starts
them. The lab's policy is a lerobot ACT at lerobot's default size for a state-only robot (dim_model 512, 4 encoder
layers), random weights with statistics in the robot's units, saved as a fleetloop weights file. The first version
reaches the robot whole; each later one is a delta of the adapters. The figure: the bytes the gateway pushed for each
version after the first (its "as a delta" log lines), against the model's full bytes.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import LOWER, Result, free_port

DATASET = "panda_pick_cube"
VERSIONS = 4  # v1 whole, v2..v4 deltas
DELTA = re.compile(r"pushing panda_pick_cube v(\d+) to \S+ as a delta on v\d+: ([\d.]+) MB instead of ([\d.]+) MB")


def _lab_act(path: Path) -> int:
    """A lerobot ACT at its default size for the Panda's state, written as a weights file; its parameter count."""
    import numpy as np

    from hal.sim import SIM_TASKS
    from policies.lerobot_policy import LerobotPolicy
    from policies.weights import policy_to_bytes

    spec = SIM_TASKS[DATASET]
    observation = {s.name: {"shape": list(s.shape), "dtype": s.dtype} for s in spec.observation}
    names = sorted(observation)
    inputs = {"observation.state": names, "observation.environment_state": names}
    policy = LerobotPolicy(observation, spec.action.shape[0], "act", {"chunk_size": 10, "n_action_steps": 10}, inputs)
    rng = np.random.default_rng(0)
    data = {f"obs.{k}": rng.normal(size=(64, *v["shape"])).astype(np.float32) for k, v in observation.items()}
    data["action"] = rng.uniform(spec.action.low, spec.action.high, size=(64, spec.action.shape[0])).astype(np.float32)
    policy.fit_normalization(data)
    path.write_bytes(policy_to_bytes(policy.eval()))
    return sum(p.numel() for p in policy.parameters())


def measure(workdir: Path, rank: int = 8, timeout_s: float = 420.0, say: Callable[[str], None] = print) -> list[Result]:
    root = workdir / "adapter-push"
    root.mkdir()
    lab = root / "lab-act.safetensors"
    parameters = _lab_act(lab)
    port = free_port()
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "fleetloop.cli"]
    data = str(root / "data")
    commands = {
        "cloud": ["cloud", "--root", data, "--port", str(port), "--no-learner"],
        "robot": ["edge", "--robot", f"sim:{DATASET}", "--id", "robot-1", "--cloud", f"127.0.0.1:{port}"]
        + ["--hz", "50", "--preload", "lerobot", "--spool", str(root / "spool")],
        "learner": ["learner", "--root", data, "--init", f"{DATASET}={lab}", "--adapters", f"{DATASET}={rank}"]
        + ["--round-episodes", "2", "--train-steps", "20", "--batch-size", "16", "--track", "none"],
    }
    say(f"adapter-push: a {parameters / 1e6:.1f}M-parameter lerobot ACT, LoRA rank {rank}, {VERSIONS} versions")
    processes: list[subprocess.Popen] = []
    try:
        for name, args in commands.items():
            with open(root / f"{name}.log", "w") as out:
                processes.append(subprocess.Popen(cli + args, stdout=out, stderr=subprocess.STDOUT, env=env))
            if name == "cloud":
                time.sleep(3.0)  # the gateway listens before the robot dials (it would retry anyway)
        deadline = time.monotonic() + timeout_s
        pushes: dict[int, tuple[float, float]] = {}
        while time.monotonic() < deadline and len(pushes) < VERSIONS - 1:
            time.sleep(1.0)
            if any(p.poll() is not None for p in processes):
                raise RuntimeError(f"a process of the adapter-push bench exited; see the logs in {root}")
            log = (root / "cloud.log").read_text(errors="replace")
            pushes = {int(v): (float(sent), float(full)) for v, sent, full in DELTA.findall(log)}
        if len(pushes) < VERSIONS - 1:
            raise RuntimeError(f"only {len(pushes)} delta pushes within {timeout_s:.0f} s; see the logs in {root}")
    finally:
        for process in processes[::-1]:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    sent = statistics.median(s for s, _ in pushes.values())
    full = statistics.median(f for _, f in pushes.values())
    return [
        Result(
            f"adapter push: MB a version of a {parameters / 1e6:.1f}M-parameter lerobot ACT trained with "
            f"--adapters (LoRA rank {rank}) carried to the robot in the real loop, median of v2-v{VERSIONS} "
            "(vs the full model)",
            sent,
            "MB",
            full,
            LOWER,
        )
    ]
