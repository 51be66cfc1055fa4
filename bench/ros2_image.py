"""The ROS 2 image path: 640x480 rgb8 at 30 Hz from a robot node into the Ros2Robot driver.

Latency is the image header stamp (set by the publisher just before publishing) to the driver's receipt,
both on this host's ROS clock. Two transports, RELIABLE QoS both: the shared-memory profile
(launch/ros2/fastdds_shm.xml, 16 MB segment) and Fast DDS's default as the baseline. Fast DDS reads its
profile once per process, so each variant runs the node and the driver in fresh processes.

    python -m bench.ros2_image [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import HIGHER, LOWER, Result

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "launch" / "ros2" / "fastdds_shm.xml"
PANDA_YAML = ROOT / "launch" / "ros2" / "panda_sim.yaml"
VARIANTS = ("shm", "default")


def _env(variant: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION")}
    env["MUJOCO_GL"] = env.get("MUJOCO_GL", "egl")
    if variant == "shm":
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    return env


def _measure_here(seconds: float, domain: int) -> dict:
    """Runs in a child whose environment already names the transport: driver side of one variant."""
    import yaml

    from hal.ros2 import Ros2Robot, Ros2RobotConfig

    raw = yaml.safe_load(PANDA_YAML.read_text())
    raw["observations"].append(
        {"name": "camera", "topic": "/panda/image", "type": "sensor_msgs/Image", "shape": [480, 640, 3]}
    )
    robot = Ros2Robot(Ros2RobotConfig.from_dict(raw), domain_id=domain)
    try:
        robot.reset()
        time.sleep(0.5)  # let discovery and the first frames settle
        before, count_before = len(robot.latencies_s("camera")), robot.received("camera")
        started = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        latencies = np.asarray(robot.latencies_s("camera")[before:]) * 1e3
        received = robot.received("camera") - count_before
    finally:
        robot.close()
    return {
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
        "hz": received / elapsed,
        "frames": int(received),
    }


def _run_variant(variant: str, seconds: float, domain: int) -> dict:
    env = _env(variant)
    node = subprocess.Popen(
        [sys.executable, "-m", "hal.ros2_sim_node", "--domain-id", str(domain), "--image"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.ros2_image",
                "--child",
                "--seconds",
                str(seconds),
                "--domain-id",
                str(domain),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        if child.returncode != 0:
            raise RuntimeError(f"{variant} measurement failed: {child.stderr[-2000:]}")
        return json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        node.terminate()
        try:
            node.wait(timeout=5)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=5)


def measure_image_path(seconds: float = 5.0) -> dict:
    """{"shm": {...}, "default": {...}}, each with p50_ms, p99_ms, hz (received) and frames."""
    base = 100 + os.getpid() % 50
    return {variant: _run_variant(variant, seconds, base + 50 * i) for i, variant in enumerate(VARIANTS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--domain-id", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure_here(args.seconds, args.domain_id)), flush=True)
        return 0
    results = measure_image_path(args.seconds)
    for variant, figures in results.items():
        print(
            f"{variant:>8}: p50 {figures['p50_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms  "
            f"{figures['hz']:.1f} Hz ({figures['frames']} frames, 640x480 rgb8, RELIABLE)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())


def measure(seconds: float = 5.0, say: Callable[[str], None] = print) -> list[Result]:
    """The image path as bench results: the shipped SHM profile against Fast DDS's default transport."""
    say(f"ros2: 640x480 rgb8 at 30 Hz into the driver, {seconds:.0f} s per transport")
    figures = measure_image_path(seconds)
    shm, default = figures["shm"], figures["default"]
    say(
        f"  shm p50 {shm['p50_ms']:.2f} ms, p99 {shm['p99_ms']:.2f} ms, {shm['hz']:.1f} Hz; "
        f"default p50 {default['p50_ms']:.2f} ms, p99 {default['p99_ms']:.2f} ms, {default['hz']:.1f} Hz"
    )
    name = "ros2 image path 640x480 @30 Hz"
    return [
        Result(
            f"{name}: p50 latency (SHM profile vs default transport)", shm["p50_ms"], "ms", default["p50_ms"], LOWER
        ),
        Result(
            f"{name}: p99 latency (SHM profile vs default transport)", shm["p99_ms"], "ms", default["p99_ms"], LOWER
        ),
        Result(f"{name}: frames/s received (SHM profile vs default transport)", shm["hz"], "Hz", default["hz"], HIGHER),
    ]
