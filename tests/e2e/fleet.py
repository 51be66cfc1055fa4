"""Helpers that start the real parts (cloud and edges) as separate processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge.segment_spool import SegmentSpool, open_spool

ENV = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@dataclass
class Fleet:
    root: Path
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "a")  # noqa: SIM115 (kept open for the process's life)
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetloop.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**ENV, **(env or {})},
        )
        self.processes[name] = process
        return process

    def start_cloud(
        self,
        *extra: str,
        learner: bool = False,
        env: dict[str, str] | None = None,
        name: str = "cloud",
        port: int | None = None,
    ) -> subprocess.Popen:
        """``learner``: the cloud runs its own learner process (default ``--no-learner``); ``env``: added to its
        environment (e.g. the ``AWS_*`` variables of an object store); ``name`` and ``port``: a second gateway's."""
        port = port or self.port
        base = ["cloud", "--root", str(self.root / "data"), "--port", str(port)]
        process = self._start(name, [*base, *([] if learner else ["--no-learner"]), *extra], env=env)

        def listening() -> bool:
            assert process.poll() is None, f"the cloud exited: {self.log(name)}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(listening, 60, "the cloud to listen")
        return process

    def start_edge(
        self,
        robot_id: str,
        *extra: str,
        hz: float = 50.0,
        seed: int = 1,
        robot: str = "sim:panda_pick_cube",
        env: dict[str, str] | None = None,
        cloud: str | None = None,
    ) -> subprocess.Popen:
        """``cloud``: where the edge connects (default the gateway itself; e.g. a LinkProxy's address)."""
        return self._start(
            robot_id,
            [
                "edge",
                "--robot",
                robot,
                "--id",
                robot_id,
                "--cloud",
                cloud or self.target,
                "--hz",
                str(hz),
                "--seed",
                str(seed),
                "--spool",
                str(self.spool_path(robot_id)),
                "--stats-file",
                str(self.root / f"{robot_id}.stats.json"),
                *extra,
            ],
            env=env,
        )

    def start_learner(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """The learner as its own process on the cloud's data folder (the cloud runs with --no-learner)."""
        return self._start("learner", ["learner", "--root", str(self.root / "data"), *extra], env=env)

    def kill(self, name: str) -> None:
        """SIGKILL: no cleanup, no flush, as a crash or a pulled plug."""
        process = self.processes[name]
        process.kill()
        process.wait(timeout=30)

    def spool_path(self, robot_id: str) -> Path:
        return self.root / f"{robot_id}.spool.db"

    def spool(self, robot_id: str) -> SegmentSpool:
        """The robot's spool, opened to look beside its edge (read-only: the edge may be writing it)."""
        return open_spool(self.spool_path(robot_id), read_only=True)

    def stats(self, robot_id: str) -> dict:
        return json.loads((self.root / f"{robot_id}.stats.json").read_text())

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def stop(self, name: str, timeout_s: float = 30.0) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout_s)

    def stop_all(self) -> None:
        clouds = [n for n in self.processes if n.startswith("cloud")]  # last: edges wait for their acks
        for name in [n for n in self.processes if n not in clouds] + clouds:
            try:
                self.stop(name, timeout_s=20)
            except subprocess.TimeoutExpired:
                self.processes[name].kill()


def publish_untrained_policy(root: Path, task: str, hidden: tuple[int, ...] = (32,)) -> None:
    """Publishes a randomly initialised policy for a sim task, so a robot with no operator has actions."""
    from hal.sim import SIM_TASKS

    spec = SIM_TASKS[task]
    publish_untrained(root, task, spec.observation, spec.action, hidden)


def publish_untrained(root: Path, name: str, observation, action, hidden: tuple[int, ...] = (32,)) -> None:
    """Publishes a randomly initialised policy ``name`` for these observation specs and action spec (a robot's
    capabilities), so a robot with no operator has actions."""
    from cloud.data.layout import DataLayout
    from cloud.data.learner_key import signing_registry
    from cloud.data.store import ColumnSpec
    from cloud.learning.policy_choice import policy_for_schema
    from policies.weights import policy_to_bytes
    from protocol.steps import schema_for

    schema = schema_for([(s.name, s.dtype, s.shape) for s in observation], (action.dtype, action.shape))
    policy = policy_for_schema({k: ColumnSpec(d, s) for k, (d, s) in schema.items()}, hidden=hidden)
    signing_registry(DataLayout(root / "data")).publish(name, policy_to_bytes(policy))
