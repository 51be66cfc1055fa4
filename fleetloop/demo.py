"""``fleetloop demo``: the cloud and a small simulated fleet on this machine, with a live table and the phone page.

Every part runs as its own process, talking over loopback gRPC exactly as on a real fleet.
The table is read from the episode store; the summary lands in runs/<run>/summary.json, and how the run learned
episode by episode (the rolling success over the last 20 episodes, when it reached the target) in learning.json.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from rich.live import Live
from rich.table import Table

from cloud.data.store import EpisodeStore
from cloud.data.version_summary import (
    ROLLING_WINDOW,
    VersionSummary,
    autonomy_climbed,
    episode_outcomes,
    first_reaching,
    rolling_success,
    summarize,
)
from fleetloop.table_console import table_console
from hal.config import CodeConfig

log = logging.getLogger("fleetloop.demo")


class DemoConfig(CodeConfig):
    config_name = "demo"

    robots: Annotated[int, Field(ge=1)] = 2
    # The Panda picking a cube; "panda_pick_cube_camera" sees it only through a camera from above (hal.sim), the
    # regime vision policies and VLA fleets live in: the learner then trains a small CNN.
    task: Literal["panda_pick_cube", "panda_pick_cube_camera"] = "panda_pick_cube"
    minutes: Annotated[float, Field(gt=0)] = 6.0
    control_hz: Annotated[float, Field(gt=0)] = 10.0
    run_dir: str | None = None
    # stop early once the autonomous success over the last 20 episodes reaches this (a stable target, as SOP counts)
    target_success: Annotated[float, Field(ge=0, le=1)] = 0.8
    seed: Annotated[int, Field(ge=0)] = 0  # the robots' (cube placements, operator) and the learner's
    warm_start: bool = True  # off: every version trains from a fresh policy (the learner's --no-warm-start)
    # the learner's policy chooses the gripper command among 0 open / 1 stay / 2 close (``action_levels``) instead of
    # regressing it, which averages open and close into a half-closed dither near the grasp
    gripper_choice: bool = True
    stop_at_target: bool = True  # off: run the whole time, to see whether a skill once learned stays learned
    # async: the robots never stop; the learner trains between versions and publishes every round_episodes.
    # sync (to compare): each robot runs its share of round_episodes with a version, then holds until the next.
    schedule: Literal["async", "sync"] = "async"
    round_episodes: Annotated[int, Field(ge=1)] = 5  # finished episodes between two versions

    @property
    def episodes_per_robot(self) -> int:
        """The synchronous schedule's episodes per robot and version: its share of ``round_episodes``, rounded up."""
        return -(-self.round_episodes // self.robots)

    def schedule_said(self) -> str:
        """The schedule in the operator's words, for the demo's first line."""
        if self.schedule == "async":
            return "asynchronous: the robots never stop for the learner"
        return f"synchronous: each robot runs {self.episodes_per_robot} episodes per version, then holds for the next"

    def learner_args(self, run_dir: Path) -> list[str]:
        args = ["--learner-seed", str(self.seed)] + ([] if self.warm_start else ["--no-warm-start"])
        if self.gripper_choice:  # the Panda's action: x, y, z, then the gripper's choice
            policy = run_dir / "policy.json"
            policy.write_text(json.dumps({"action_levels": [[], [], [], [0, 1, 2]]}))
            kind = "cnn" if self.task == "panda_pick_cube_camera" else "mlp"
            args += ["--policy", f"{self.task}={kind}", "--policy-config", f"{self.task}={policy}"]
        if self.task == "panda_pick_cube_camera":
            # The CNN's gradient step costs ~4x the MLP's at batch 256 on one core: smaller batches and versions
            # keep a version following its episodes within seconds on 2 cores.
            args += ["--batch-size", "64", "--train-steps", "500"]
        if self.schedule == "async":
            return [*args, "--round-episodes", str(self.round_episodes)]
        fleet_round = str(self.episodes_per_robot * self.robots)  # every robot waits until this many have ended
        return [*args, "--round-episodes", fleet_round, "--first-round-episodes", fleet_round, "--synchronous"]


def _pick_port(preferred: int = 7070) -> int:
    """The default cloud port when it is free (so `fleetloop fleet` finds the demo), else any free one."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def _wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the cloud exited with code {process.returncode}; see its log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the cloud did not listen on port {port} within {timeout_s:.0f} s")


def _pairing_url(cloud_log: Path, timeout_s: float = 10.0) -> str:
    """The phone pairing URL the cloud printed ("" if it did not within ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in cloud_log.read_text(errors="replace").splitlines():
            if line.startswith("phone pairing URL: "):
                return line.removeprefix("phone pairing URL: ").strip()
        time.sleep(0.2)
    return ""


def _stop(processes: list[subprocess.Popen], timeout_s: float = 30.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()


def render_table(
    summary: list[VersionSummary], elapsed_s: float, robots: int, learning: Learning | None = None
) -> Table:
    caption = None
    if learning is not None and learning.last_rolling is not None:
        caption = f"autonomous success over the last {ROLLING_WINDOW} episodes: {learning.last_rolling:.2f}"
        if learning.reached_at_episode is not None:
            caption += (
                f" (reached {learning.target:.2f} after {learning.reached_at_episode} episodes, "
                f"{learning.reached_at_s:.0f} s)"
            )
    table = Table(
        title=f"fleetloop demo: {robots} simulated robots, one shared policy ({elapsed_s:.0f} s)", caption=caption
    )
    for column in ("policy version", "episodes", "autonomous success", "intervention rate", "steps", "steps/s"):
        table.add_column(column, justify="right")
    for row in summary:
        table.add_row(
            "none (operator)" if row.version == 0 else f"v{row.version}",
            str(row.episodes),
            "-" if row.autonomous_success is None else f"{row.autonomous_success:.2f}",  # no episode ended yet
            f"{row.intervention_rate:.2f}",
            str(row.steps),
            f"{row.steps_per_s:.1f}",
        )
    return table


@dataclass(frozen=True)
class Learning:
    """How the run learned, episode by episode (``learning.json``): the rolling autonomous success over the last
    ``ROLLING_WINDOW`` episodes, and when it first reached the target (the fleet-scaling bench reads this)."""

    robots: int
    task: str
    seed: int
    schedule: str
    target: float
    episodes: int
    reached_at_episode: int | None
    reached_at_s: float | None  # after the fleet's first step
    rolling: list[float | None]
    versions: list[int]  # the version each episode started under

    @classmethod
    def of(cls, store: EpisodeStore, config: DemoConfig) -> Learning:
        """From the store as its last refresh left it (``summarize`` refreshes it just before)."""
        outcomes = episode_outcomes(store, config.task, refresh=False)
        rolling = rolling_success(outcomes)
        reached = first_reaching(rolling, config.target_success)
        return cls(
            config.robots,
            config.task,
            config.seed,
            config.schedule,
            config.target_success,
            len(outcomes),
            reached,
            round(outcomes[reached - 1].ended_s, 2) if reached else None,
            [None if r is None else round(r, 3) for r in rolling],
            [o.version for o in outcomes],
        )

    @property
    def last_rolling(self) -> float | None:
        return self.rolling[-1] if self.rolling else None


def _edge_args(i: int, port: int, config: DemoConfig, run_dir: Path) -> list[str]:
    """`fleetloop edge` for the demo's robot ``i``: its own seed and spool."""
    seed = 1000 * i + 100_000 * config.seed
    args = [
        *("edge", "--robot", f"sim:{config.task}", "--id", f"robot-{i}", "--cloud", f"127.0.0.1:{port}"),
        *("--seed", str(seed), "--hz", str(config.control_hz), "--spool", str(run_dir / f"spool-{i}.db")),
    ]
    if config.schedule == "sync":
        args += ["--episodes-per-version", str(config.episodes_per_robot)]
    return args


def run_demo(config: DemoConfig) -> int:
    from cloud.data.layout import DataLayout

    run_dir = Path(config.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    layout = DataLayout(run_dir)  # the cloud below runs with --root run_dir
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = _pick_port()
    phone_port = _pick_port(7071)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
    console = table_console()
    console.print(
        f"[bold]fleetloop demo[/] in {run_dir}: cloud on 127.0.0.1:{port}, {config.robots} robots "
        f"({config.task}, {config.control_hz:.0f} Hz, seed {config.seed}), a scripted operator on each, "
        f"{config.schedule_said()}; logs in {logs}. The fleet: fleetloop fleet --watch --cloud 127.0.0.1:{port}"
    )
    cli = [sys.executable, "-m", "fleetloop.cli"]
    processes: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as out:
            process = subprocess.Popen(cli + args, stdout=out, stderr=subprocess.STDOUT, env=env)
        processes.append(process)
        return process

    learner = config.learner_args(run_dir)
    cloud = start(
        "cloud", ["cloud", "--root", str(run_dir), "--port", str(port), "--phone-port", str(phone_port), *learner]
    )
    try:
        _wait_for_port(port, cloud)
        pairing = _pairing_url(logs / "cloud.log")
        if pairing:
            console.print(
                f"The phone page: {pairing} (a browser on this machine; it trusts the cloud once it accepts the "
                f"certificate or installs {layout.certs / 'ca.pem'}). Demonstrations recorded there train "
                "the `phone` policy, whose foresight the page draws."
            )
        for i in range(1, config.robots + 1):
            start(f"robot-{i}", _edge_args(i, port, config, run_dir))
        store = None
        started = time.monotonic()
        summary: list[VersionSummary] = []
        # transient: the live view gives way to the final table printed below, so it is not shown twice
        with Live(render_table([], 0, config.robots), console=console, refresh_per_second=2, transient=True) as live:
            while time.monotonic() - started < config.minutes * 60:
                time.sleep(1.0)
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError("a demo process exited early; see the logs in " + str(logs))
                if store is None and layout.store.exists():
                    store = EpisodeStore(layout.store, read_only=True)
                learning = None
                if store is not None:
                    summary = summarize(store, config.task)
                    learning = Learning.of(store, config)
                live.update(render_table(summary, time.monotonic() - started, config.robots, learning))
                if config.stop_at_target and learning is not None and learning.reached_at_episode is not None:
                    break
    finally:
        # Robots first, so they drain their spools into the cloud before it stops.
        _stop(processes[1:])
        _stop(processes[:1])
    store = EpisodeStore(layout.store, read_only=True)
    summary = summarize(store, config.task)
    learning = Learning.of(store, config)
    (run_dir / "summary.json").write_text(json.dumps([s.to_dict() for s in summary], indent=2))
    (run_dir / "learning.json").write_text(json.dumps(asdict(learning)))
    console.print(render_table(summary, time.monotonic() - started, config.robots, learning))
    first, best = autonomy_climbed(summary)
    rates = [s.intervention_rate for s in summary if s.episodes]
    console.print(
        f"Autonomous success went from {first:.2f} to {best:.2f}; the operator's share of steps from "
        f"{rates[0] if rates else 0:.2f} to {rates[-1] if rates else 0:.2f}. "
        f"Summary written to {run_dir / 'summary.json'}; learning curves: tensorboard --logdir {layout.runs}"
    )
    return 0 if best >= 0.5 else 1
