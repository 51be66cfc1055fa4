"""lerobot's keyboard_ee, for real, driving a joint arm through lerobot's kinematics: a key held on a virtual X
display moves the fake lerobot arm's tip in +x (its joints solved by placo on a URDF the test writes).

The operator runs in a process of its own started with DISPLAY set, as ``fleetloop edge`` would run it: pynput
chooses its X backend when lerobot first imports it, which in this pytest process may already have happened
without a display. Xvfb and xdotool are Debian packages (scripts/bootstrap.sh installs them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from lerobot.model.kinematics import RobotKinematics

from tests.e2e.x_display import x_display
from tests.edge.arm_urdf import ARM, FRAME, write_arm_urdf

ROOT = Path(__file__).resolve().parents[2]
START = [0.0, -50.0, 80.0, 20.0, 0.0, 50.0]  # a bent arm, its tip at x 0.23 m, z 0.05 m

# The edge's side: the operator --operator teleop:<config> builds, on the fake arm's driver; the person holds Left
# (keyboard_ee: delta_x +1) while the loop runs with no policy, so every step is theirs.
OPERATOR = """
import json, subprocess, sys, time
import numpy as np
from edge.action_map import RobotAction
from edge.teleop_operator import operator_for
from hal.lerobot_robot import make_lerobot_robot

config, calibration, start = sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]), np.float32)
driver = make_lerobot_robot(
    {"type": "fleetloop_fake_arm", "calibration_dir": calibration, "step_s": 0.1, "max_speed_deg_s": 200.0}
)
operator = operator_for("teleop:" + config, "", RobotAction.of(driver), "arm-1", "ana@arm-1")
operator.start()
observation = driver.reset()
for _ in range(5):
    observation = driver.apply(start).observation
before = observation["state"].tolist()
operator.teleop.device.listener.wait()  # pynput's listener is ready: a key pressed before it would be missed
subprocess.run(["xdotool", "keydown", "Left"], check=True, timeout=10)
deadline = time.monotonic() + 10
while operator.teleop.read()["delta_x"] != 1.0:  # the listener thread sees the key go down
    assert time.monotonic() < deadline, "keyboard_ee never saw Left held"
    time.sleep(0.05)
people = []
for step in range(8):
    action, person = operator.decide(observation, None, step)
    people.append(person)
    observation = driver.apply(action).observation
    time.sleep(0.05)
subprocess.run(["xdotool", "keyup", "Left"], check=True, timeout=10)
operator.close()
driver.close()
print(json.dumps({"before": before, "after": observation["state"].tolist(), "people": people}))
"""


def test_a_held_arrow_key_moves_the_arms_tip_in_plus_x_through_lerobots_kinematics(tmp_path: Path) -> None:
    urdf = write_arm_urdf(tmp_path)
    config = tmp_path / "keyboard_ee.yaml"
    bounds = {"min": [0.0, -0.3, 0.0], "max": [0.3, 0.3, 0.3]}
    kinematics = {"urdf": str(urdf), "frame": FRAME, "joints": list(ARM), "bounds": bounds, "gripper": {}}
    config.write_text(yaml.safe_dump({"type": "keyboard_ee", "kinematics": kinematics}))
    with x_display() as display:
        done = subprocess.run(
            [sys.executable, "-c", OPERATOR, str(config), str(tmp_path / "calibration"), json.dumps(START)],
            env={**os.environ, "DISPLAY": display, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(said["people"]), said  # no policy: the person drove every step
    arm = RobotKinematics(str(urdf), FRAME, list(ARM))
    before, after = (arm.forward_kinematics(np.array(said[k][:5], dtype=float))[:3, 3] for k in ("before", "after"))
    assert after[0] - before[0] > 0.04, (before, after)  # about 1 cm a tick (step_sizes.x) for 8 ticks
    assert np.abs(after[1:] - before[1:]).max() < 0.01, (before, after)
