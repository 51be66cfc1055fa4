"""The learner under torchrun: two CPU processes (gloo) train with DistributedDataParallel in lockstep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from policies.weights import policy_from_bytes
from tests.factories import episode_rows, step_columns, store_schema

TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS = 4


def make_root(root: Path) -> None:
    with EpisodeStore(root / "store") as store:
        store.ensure_dataset("toy", store_schema(state_dim=3, action_dim=2))
        for i in range(2):
            rng = np.random.default_rng(i)
            state = rng.uniform(-1, 1, size=(30, 3)).astype(np.float32)
            columns = step_columns(30, state=state, action=state[:, :2] * 0.5, intervention=True, done_at_end=True)
            columns["reward"] = rng.normal(size=30).astype(np.float32)
            columns["success"][-1] = True
            store.write([episode_rows("toy", f"ep{i}", columns)])


@pytest.mark.parametrize("algorithm", ["hg-dagger", "sac"])
def test_two_gloo_ranks_keep_identical_parameters_after_every_step(tmp_path, algorithm) -> None:
    make_root(tmp_path / "data")
    trace = tmp_path / "trace"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    result = subprocess.run(
        [
            str(TORCHRUN),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "fleetloop.distributed_learner",
            "--root",
            str(tmp_path / "data"),
            "--backend",
            "gloo",
            "--algorithm",
            algorithm,
            "--rounds",
            "1",
            "--train-steps",
            str(STEPS),
            "--trace-params",
            str(trace),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [[json.loads(line) for line in (trace / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [e["step"] for e in ranks[0]] == list(range(1, STEPS + 1))
    assert [e["step"] for e in ranks[1]] == list(range(1, STEPS + 1))
    digests0 = [e["digest"] for e in ranks[0]]
    assert digests0 == [e["digest"] for e in ranks[1]]  # bit-identical parameters on both ranks after each step
    assert len(set(digests0)) == STEPS  # and every step changed them
    # Only rank 0 published: exactly one version, of the type the algorithm trains.
    registry = PolicyRegistry(tmp_path / "data" / "registry")
    assert registry.latest("toy").version == 1
    policy = policy_from_bytes(registry.read("toy", 1))
    assert policy.type_name == ("sac_actor" if algorithm == "sac" else "mlp")
    assert policy.act({"state": np.zeros(3, np.float32)}).shape == (1, 2)


def test_under_torchrun_every_rank_trains_between_rounds_in_lockstep(tmp_path) -> None:
    """After the first round no second is due (too few episodes): both ranks go on training on its data, a slice at a
    time up to the version's budget, with identical parameters after every step."""
    make_root(tmp_path / "data")
    trace = tmp_path / "trace"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "fleetloop.distributed_learner"]
    command += ["--root", str(tmp_path / "data"), "--backend", "gloo", "--rounds", "2"]
    command += ["--train-steps", str(STEPS), "--trace-params", str(trace)]
    learner = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

    def steps(rank: int) -> list[dict]:
        path = trace / f"rank{rank}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    try:
        deadline = time.monotonic() + 90
        while min(len(steps(0)), len(steps(1))) < 2 * STEPS:
            assert learner.poll() is None, f"torchrun exited with {learner.returncode}"
            assert time.monotonic() < deadline, "no training between rounds under torchrun"
            time.sleep(0.2)
        time.sleep(1.0)  # and no more than the version's budget
    finally:
        learner.terminate()  # torchrun passes it on to both ranks (each in a session of its own)
        try:
            learner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(learner.pid, signal.SIGKILL)
            raise
    ranks = [steps(0), steps(1)]
    assert [e["step"] for e in ranks[0]] == [e["step"] for e in ranks[1]] == list(range(1, STEPS + 1)) * 2
    assert [e["digest"] for e in ranks[0]] == [e["digest"] for e in ranks[1]]
    assert len({e["digest"] for e in ranks[0]}) == 2 * STEPS  # every step, between rounds too, changed them
