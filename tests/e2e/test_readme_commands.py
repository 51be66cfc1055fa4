"""Every command line of the README, run as written, does what the README says.

The commands are read from README.md's ```bash blocks. ``COVERED`` (readme_covered.py) lists each one under the scenario
that runs it, so a command added to the README without a scenario here fails ``test_every_readme_command_is_run``. A
scenario runs its commands through bash in a fresh folder (with the checkout's ``launch/`` beside it, as in a checkout)
and changes only what would clash with parallel tests: the ports 7070/7071 become free ports, the ROS 2 domain 7 a free
one, the lab's host name ``cloud.lab.example`` becomes ``localhost`` (the certificate names loopback too), a command
that dials the default cloud address (127.0.0.1:7070) is given the scenario's, and placeholders (``flt_...``) become the
tokens the scenario's own ``devices add`` printed; a learner (or a cloud that runs one) that names no
``--train-steps`` trains ``LEARNER_TRAIN_STEPS`` per version, and without ``--batch-size`` on batches of
``LEARNER_BATCH_SIZE`` (the scenarios check that it publishes, not how well it learned). Servers are checked while
they run (listening, what the fleet shows, what the store holds), then stopped; one-shot commands must exit 0 (or with
the code the README gives) and have done what the README says.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from tests.e2e.fleet import ENV, free_port, wait_until
from tests.e2e.readme_covered import COVERED
from tests.e2e.store_checks import wait_compacted
from tests.e2e.x_display import press, x_display

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# A learner line (or a cloud line that runs the learner) that names no --train-steps trains this many per version
# instead of the default 1500 (SAC's take ~25 s of a core here): the scenarios check that each command publishes a
# version, not how well it learned.
LEARNER_TRAIN_STEPS = 100
# and batches of this many steps instead of 256: the README's ACT (8 heads, 4+4 encoder layers) trains its 200 steps in
# ~40 s of a core on batches of 256 drawn from the scenario's ~80 recorded steps.
LEARNER_BATCH_SIZE = 64
LEARNER_LINE = re.compile(r"(\S+=\S+ )*(fleetloop learner|torchrun .*-m fleetloop\.distributed_learner)\b")
CLOUD_LINE = re.compile(r"(\S+=\S+ )*fleetloop cloud\b")

ACT_JSON = """echo '{"chunk_size": 10, "n_action_steps": 10, "dim_model": 64, "dim_feedforward": 128}' > act.json"""


def readme_commands(text: str | None = None) -> list[str]:
    """The command lines of the README's bash blocks: comments dropped, continuation lines joined."""
    text = README.read_text() if text is None else text
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            command = re.sub(r"(^|\s)#.*$", "", line).strip()
            if command:
                commands.append(command)
    return commands


def test_readme_commands_are_read_as_a_user_would() -> None:
    text = "```bash\nfoo --a 1   # a comment\n# only a comment\nbar --b \\\n    --c\n```\n```python\nnot_this()\n```\n"
    assert readme_commands(text) == ["foo --a 1", "bar --b --c"]


def test_every_readme_command_is_run() -> None:
    missing = [command for command in readme_commands() if command not in COVERED]
    assert not missing, "README commands no scenario runs (add them to COVERED and a scenario):\n" + "\n".join(missing)
    stale = [command for command in COVERED if command not in readme_commands()]
    assert not stale, "COVERED names commands the README no longer has:\n" + "\n".join(stale)


@dataclass
class Shell:
    """A user's terminal in a fresh folder: runs README lines through bash with the substitutions above."""

    cwd: Path
    port: int = field(default_factory=free_port)
    phone_port: int = field(default_factory=free_port)
    ros_domain: int = 0
    tokens: dict[str, str] = field(default_factory=dict)
    servers: dict[str, subprocess.Popen] = field(default_factory=dict)
    display: str = ""  # an X display the user's commands see (the keyboard operator reads keys from it)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self, line: str) -> str:
        assert line in COVERED and COVERED[line] != "", f"not a README command: {line}"
        assert line in readme_commands(), f"the README no longer has: {line}"
        text = line.replace("7070", str(self.port)).replace("7071", str(self.phone_port))
        text = text.replace("cloud.lab.example:", "localhost:")
        text = re.sub(r"(ROS_DOMAIN_ID=|--domain-id )7\b", rf"\g<1>{self.ros_domain}", text)
        for placeholder, token in self.tokens.items():
            text = text.replace(placeholder, token)
        dials = re.match(r"(\S+=\S+ )*fleetloop (edge|fleet)\b", text) and not re.search(r"\b(add|list|revoke)\b", text)
        if dials and "--cloud" not in text:
            text += f" --cloud {self.target}"
        if re.match(r"fleetloop cloud\b", text) and "--port" not in text:
            text += f" --port {self.port}"
        learns = LEARNER_LINE.match(text) or (CLOUD_LINE.match(text) and "--no-learner" not in text)
        if learns and "--train-steps" not in text:
            text += f" --train-steps {LEARNER_TRAIN_STEPS}"
        if learns and "--batch-size" not in text:
            text += f" --batch-size {LEARNER_BATCH_SIZE}"
        return text

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        display = {"DISPLAY": self.display} if self.display else {}
        return {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV.get('PATH', '')}", "PYTHONPATH": str(ROOT), **display}

    def run(self, line: str, timeout_s: float = 120, code: int = 0) -> str:
        result = subprocess.run(
            ["bash", "-c", self.command(line)],
            cwd=self.cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
        output = result.stdout + result.stderr
        assert result.returncode == code, f"`{line}` exited {result.returncode} (wanted {code}):\n{output[-3000:]}"
        return output

    def start(self, line: str, name: str, extra: str = "") -> subprocess.Popen:
        """Starts a server (a trailing ``&`` is the user's way of saying the same); its output goes to ``name``.log.
        ``extra``: flags added after the line's own (a scenario says why)."""
        log = open(self.cwd / f"{name}.log", "w")  # noqa: SIM115 (kept open for the process's life)
        text = f"{self.command(line).removesuffix('&').strip()} {extra}".strip()
        process = subprocess.Popen(
            ["bash", "-c", f"exec env {text}"],
            cwd=self.cwd,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.servers[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.cwd / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, pattern: str, timeout_s: float = 60) -> None:
        process = self.servers[name]

        def seen() -> bool:
            assert process.poll() is None, f"{name} exited ({process.returncode}):\n{self.log(name)[-3000:]}"
            return re.search(pattern, self.log(name)) is not None

        wait_until(seen, timeout_s, f"{name} to log /{pattern}/")

    def stop(self, name: str) -> int:
        process = self.servers.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise AssertionError(
                    f"{name} went on for 20 s after Ctrl-C (SIGINT):\n{self.log(name)[-2000:]}"
                ) from None
        return process.returncode

    def stop_all(self) -> None:
        """Stops every server, then fails naming the first that had to be killed."""
        failures = []
        for name in reversed(list(self.servers)):
            try:
                self.stop(name)
            except AssertionError as err:
                failures.append(err)
        if failures:
            raise failures[0]


@pytest.fixture
def shell(tmp_path: Path, ros_domain: int):
    (tmp_path / "launch").symlink_to(ROOT / "launch")
    user = Shell(cwd=tmp_path, ros_domain=ros_domain)
    yield user
    user.stop_all()


def fleet_rows(shell: Shell, **kwargs) -> dict[str, object]:
    from fleetloop.fleet_view import fetch

    return {m.resource.id: m for m in fetch(shell.target, **kwargs).members}


def stored_steps(root: Path, dataset: str) -> int:
    from cloud.data.store import EpisodeStore

    store = EpisodeStore(root / "store", read_only=True)
    try:
        return store.committed_rows(dataset) if dataset in store.datasets() else 0
    finally:
        store.close()


def test_loop_commands(shell: Shell) -> None:
    """The cloud, a scripted Panda and a pusht cart join; the learner publishes; `fleet` shows and pauses them."""
    shell.start("fleetloop cloud --root fleetloop-data --port 7070", "cloud")
    shell.wait_log("cloud", r"gateway listening on")
    shell.start("fleetloop edge --robot sim:panda_pick_cube --id robot-1 --cloud 127.0.0.1:7070 --seed 1", "robot-1")
    shell.start("fleetloop edge --robot sim:pusht --id pusht-1 --operator none", "pusht-1")
    wait_until(lambda: {"robot-1", "pusht-1"} <= set(fleet_rows(shell)), 90, "both robots in the fleet")
    shell.wait_log("cloud", r"published panda_pick_cube v1", timeout_s=120)
    wait_until(lambda: stored_steps(shell.cwd / "fleetloop-data", "panda_pick_cube") > 0, 30, "stored steps")

    shell.start("fleetloop fleet --watch", "watch")
    shell.wait_log("watch", r"robot-1")
    shell.wait_log("watch", r"pusht-1")
    output = shell.run("fleetloop fleet pause robot-1")
    assert "robot-1" in output
    wait_until(lambda: fleet_rows(shell)["robot-1"].state == "paused", 20, "robot-1 paused")


def test_learner_alone(shell: Shell) -> None:
    """`cloud --no-learner` plus `fleetloop learner` on the same data folder: the learner process publishes."""
    shell.start("fleetloop cloud --root fleetloop-data --port 7070 --no-learner", "cloud")
    shell.wait_log("cloud", r"gateway listening on")
    shell.start("fleetloop learner --root fleetloop-data", "learner")
    shell.start("fleetloop edge --robot sim:panda_pick_cube --id robot-1 --cloud 127.0.0.1:7070 --seed 1", "robot-1")
    shell.wait_log("learner", r"published panda_pick_cube v1", timeout_s=120)
    shell.wait_log("cloud", r"robot-1 now runs panda_pick_cube v1", timeout_s=30)
    assert "fleetloop.learner" not in shell.log("cloud"), "the cloud ran a learner of its own"
    # What `tensorboard --logdir fleetloop-data/runs` shows: the round that published v1 (--track's default).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = shell.cwd / "fleetloop-data" / "runs" / "panda_pick_cube"
    events = EventAccumulator(str(run))
    deadline = time.monotonic() + 60  # the round's curves are written just after its version is published
    while not (run.is_dir() and "policy/version" in events.Reload().Tags().get("scalars", [])):
        assert time.monotonic() < deadline, f"no curves in {run} 60 s after v1 was published"
        time.sleep(0.5)
    assert [e.value for e in events.Scalars("policy/version")][:1] == [1]
    assert all(math.isfinite(e.value) for e in events.Scalars("train/loss"))


PANDA_EDGE = "fleetloop edge --robot sim:panda_pick_cube --id robot-1 --cloud 127.0.0.1:7070 --seed 1"


def test_robot_commands(shell: Shell) -> None:
    """A ROS 2 robot (a sim behind topics) and a lerobot robot join the cloud beside a simulated Panda."""
    shell.start("fleetloop cloud --root fleetloop-data --port 7070", "cloud")
    shell.wait_log("cloud", r"gateway listening on")
    shell.start(PANDA_EDGE, "robot-1")
    shell.start(
        "FASTDDS_DEFAULT_PROFILES_FILE=launch/ros2/fastdds_shm.xml python -m hal.ros2_sim_node --domain-id 7 &",
        "ros2-node",
    )
    shell.start("ROS_DOMAIN_ID=7 fleetloop edge --robot ros2:launch/ros2/panda_sim.yaml --id ros-arm-1", "ros-arm-1")
    shell.start(
        "FASTDDS_DEFAULT_PROFILES_FILE=launch/ros2/fastdds_shm.xml python -m hal.ros2_sim_node --domain-id 7 "
        "--command joint_trajectory --namespace /arm &",
        "ros2-arm-node",
    )
    shell.start(
        "ROS_DOMAIN_ID=7 fleetloop edge --robot ros2:launch/ros2/panda_joint_trajectory.yaml --id joint-arm-1",
        "joint-arm-1",
    )
    shell.start("fleetloop edge --robot lerobot:launch/lerobot/fake_arm.yaml --id arm-1 --operator none", "arm-1")
    robots = {"robot-1", "ros-arm-1", "joint-arm-1", "arm-1"}
    wait_until(lambda: robots <= set(fleet_rows(shell)), 120, "the four robots")
    wait_until(lambda: fleet_rows(shell)["ros-arm-1"].steps > 0, 120, "steps from the ROS 2 robot")
    if not Path("/dev/ttyACM0").exists():  # no SO-101 on this machine: the edge says so and does not start
        output = shell.run("fleetloop edge --robot lerobot:launch/lerobot/so101_follower.yaml --id arm1", code=2)
        assert "cannot open /dev/ttyACM0 (no such device); is the arm plugged in" in output, output
        assert "Traceback" not in output


def test_keyboard_operator_command(shell: Shell) -> None:
    """A person at the keyboard of a simulated Panda, typing on an X display: they drive, label, and it waits."""
    with x_display() as display:
        shell.display = display
        shell.start("fleetloop cloud --root fleetloop-data --port 7070", "cloud")
        shell.wait_log("cloud", r"gateway listening on")
        shell.start("fleetloop edge --robot sim:panda_pick_cube --id robot-3 --operator keyboard", "robot-3")
        shell.wait_log("robot-3", r"keyboard@robot-3 at the controls")
        wait_until(lambda: getattr(fleet_rows(shell).get("robot-3"), "steps", 0) > 0, 60, "the person's steps")
        press(display, "key", "s")
        shell.wait_log("robot-3", r"succeeded \(keyboard@robot-3 says so\)")
        wait_until(lambda: fleet_rows(shell)["robot-3"].state == "waiting for reset", 20, "robot-3 waiting for reset")
        shell.stop_all()  # before its X display goes


def token_in(output: str) -> str:
    tokens = re.findall(r"flt_[A-Za-z0-9_\-]+", output)
    assert len(tokens) == 1, f"expected one token in: {output}"
    return tokens[0]


def test_credential_commands(shell: Shell) -> None:
    """Certificates, device tokens, a TLS cloud on every interface, an edge and an operator with tokens; revoke."""
    shell.run("fleetloop certs init --root fleetloop-data --host cloud.lab.example")
    assert (shell.cwd / "fleetloop-data/certs/ca.pem").is_file()
    shell.tokens["flt_..."] = token_in(
        shell.run("fleetloop devices add robot-1 --root fleetloop-data --policy panda_pick_cube")
    )
    shell.tokens["<alice's token>"] = token_in(
        shell.run("fleetloop devices add alice --kind operator --root fleetloop-data")
    )
    token_in(shell.run("fleetloop devices add cart-1 --embodiment pusht --source sim"))
    shell.start("fleetloop cloud --root fleetloop-data --host 0.0.0.0 --tls", "cloud")
    shell.wait_log("cloud", r"gateway listening on")
    shutil.copy(shell.cwd / "fleetloop-data/certs/ca.pem", shell.cwd / "ca.pem")  # "copy ... ca.pem there"
    robot = shell.start(
        "FLEETLOOP_TOKEN=flt_... fleetloop edge --robot sim:panda_pick_cube --id robot-1 "
        "--cloud cloud.lab.example:7070 --ca ca.pem",
        "robot-1",
    )
    shell.wait_log("cloud", r"robot-1 connected")
    table = shell.run("FLEETLOOP_TOKEN=<alice's token> fleetloop fleet --cloud cloud.lab.example:7070 --ca ca.pem")
    assert "robot-1" in table
    listing = shell.run("fleetloop devices list")
    assert all(name in listing for name in ("robot-1", "alice", "cart-1", "pusht")), listing
    shell.run("fleetloop devices revoke robot-1")
    wait_until(lambda: robot.poll() is not None, 30, "the revoked robot's edge to stop")
    assert robot.returncode == 3, shell.log("robot-1")[-2000:]
    for token in shell.tokens.values():
        for log in shell.cwd.glob("*.log"):
            assert token not in log.read_text(errors="replace"), f"a token in {log.name}"


def test_first_real_robot_session_commands(shell: Shell) -> None:
    """The walkthrough of a lab's first session, with no arm on this machine: configs copied, credentials made, the
    TLS cloud with its takeover pages and reward classifier up, the edge refusing to start naming the arm's port,
    and the fleet and the registry read back (a version published here as the learner would)."""
    from hal.drivers import driver_capabilities
    from policies.factory import make_policy
    from policies.weights import policy_to_bytes

    shell.run("cp launch/lerobot/so101_follower.yaml arm1.yaml")
    shell.run("cp launch/teleop/so101_leader.yaml leader.yaml")
    shell.run("fleetloop certs init --root fleetloop-data --host cloud.lab.example")
    shell.tokens["flt_..."] = token_in(
        shell.run(
            "fleetloop devices add arm1 --root fleetloop-data --policy so101_follower --policy so101_follower.reward"
        )
    )
    shell.tokens["<alice's token>"] = token_in(
        shell.run("fleetloop devices add alice --kind operator --root fleetloop-data")
    )
    token_in(shell.run("fleetloop devices add bob --kind operator --root fleetloop-data --policy so101_follower"))
    shell.start(
        "fleetloop cloud --root fleetloop-data --host 0.0.0.0 --tls --phone-port 7071 --reward-classifier "
        "so101_follower",
        "cloud",
    )
    shell.wait_log("cloud", r"gateway listening on 0\.0\.0\.0:\d+ \(TLS, device credentials required\)")
    shell.wait_log("cloud", rf"takeover pages \(operator credential\) at https://cloud.lab.example:{shell.phone_port}/")
    shutil.copy(shell.cwd / "fleetloop-data/certs/ca.pem", shell.cwd / "ca.pem")
    if not Path("/dev/ttyACM0").exists():  # no SO-101 here: the edge names the port and does not start
        output = shell.run(
            "FLEETLOOP_TOKEN=flt_... fleetloop edge --robot lerobot:arm1.yaml --id arm1 --cloud cloud.lab.example:7070 "
            "--ca ca.pem --operator teleop:leader.yaml",
            code=2,
        )
        assert "cannot open /dev/ttyACM0 (no such device); is the arm plugged in" in output, output
        assert "Traceback" not in output
    table = shell.run("FLEETLOOP_TOKEN=<alice's token> fleetloop fleet --cloud cloud.lab.example:7070 --ca ca.pem")
    assert "arm1" not in table  # it never connected

    caps = driver_capabilities(f"lerobot:{shell.cwd / 'arm1.yaml'}")  # read from its config, no hardware touched
    spec = {
        "observation": {s.name: {"shape": list(s.shape), "dtype": s.dtype} for s in caps.observation},
        "action_dim": int(caps.action.shape[0]),
        "hidden": [8],
    }
    weights = policy_to_bytes(make_policy("mlp", spec))
    signing_registry(DataLayout(shell.cwd / "fleetloop-data")).publish("so101_follower", weights, "hg-dagger (mlp)")
    listing = shell.run("fleetloop policy list so101_follower --root fleetloop-data")
    assert "v1" in listing and "hg-dagger (mlp)" in listing, listing


def test_phone_commands(shell: Shell) -> None:
    """The phone port prints a pairing URL on loopback, and on a LAN names the address given to certs init."""
    shell.start("fleetloop cloud --phone-port 7071 --phone-image 224x224", "cloud")
    shell.wait_log("cloud", rf"https://[^\s]+:{shell.phone_port}/")
    shell.stop("cloud")

    shell.cwd = shell.cwd / "lan"  # the LAN set-up from scratch (certs init refuses to replace the first certificates)
    shell.cwd.mkdir()
    shell.run("fleetloop certs init --host 192.168.1.20")
    token_in(shell.run("fleetloop devices add robot-1 --policy panda_pick_cube"))
    shell.start("fleetloop cloud --tls --host 0.0.0.0 --phone-port 7071", "lan-cloud")
    shell.wait_log("lan-cloud", rf"https://192\.168\.1\.20:{shell.phone_port}/")


def test_takeover_commands(shell: Shell) -> None:
    """An operator and a robot credential, the cloud's takeover pages, a Panda with no operator: a person at its page
    (the page's protocol, no browser) takes over and drives it; the store holds those steps as theirs."""
    from cloud.data.store import EpisodeStore
    from tests.e2e.takeover_client import TakeoverClient

    alice = token_in(shell.run("fleetloop devices add alice --kind operator"))
    shell.tokens["flt_..."] = token_in(shell.run("fleetloop devices add robot-1 --policy panda_pick_cube"))
    shell.start("fleetloop cloud --phone-port 7071", "cloud")
    shell.wait_log(
        "cloud", rf"robot takeover pages \(operator credential\) at https://127.0.0.1:{shell.phone_port}/takeover/"
    )
    shell.start(
        "FLEETLOOP_TOKEN=flt_... fleetloop edge --robot sim:panda_pick_cube --id robot-1 --operator none", "robot"
    )
    shell.wait_log("cloud", r"robot-1 connected")
    url = f"wss://127.0.0.1:{shell.phone_port}/takeover/robot-1/ws"
    client = TakeoverClient(url, "alice", alice, shell.cwd / "fleetloop-data" / "certs" / "ca.pem")
    try:
        client.wait(lambda c: c.robot is not None and c.views, 30, "the robot's live view")
        client.send(("take_over",), [1.0, 0.0, 0.0, 1.0])
        for _ in range(20):
            client.send((), [1.0, 0.0, 0.0, 1.0])
            time.sleep(0.05)
        client.send(("hand_back",))
    finally:
        client.close()
    shell.stop("robot")
    wait_compacted(shell.cwd / "fleetloop-data" / "store")  # acked steps reach the store once the uplink pauses
    store = EpisodeStore(shell.cwd / "fleetloop-data" / "store", read_only=True)
    drivers = {
        who
        for e in store.episodes("panda_pick_cube")
        for who in store.drivers("panda_pick_cube", e.episode_id).values()
    }
    assert drivers == {"browser:alice"}


def registry_versions(root: Path, policy: str) -> list[int]:
    from cloud.data.version_registry import PolicyRegistry

    return PolicyRegistry(root / "registry").versions(policy)


def cart_state(shell: Shell) -> str:
    member = fleet_rows(shell).get("cart-1")
    return "" if member is None else str(member.state)


@pytest.mark.timeout(600)
def test_policy_commands(shell: Shell) -> None:
    """A bf16 cloud pushes half-size updates; policy list and rollback; pusht carts run remote and lerobot-preloaded;
    the store's episodes go out as a LeRobotDataset and come back as offline demonstrations."""
    root = shell.cwd / "fleetloop-data"
    # Its learner publishes a version every 2 finished episodes instead of 5 (v4 after 8 episodes of the Panda, not 17):
    # this scenario reads the updates' sizes, the list and a rollback, not what the versions learned.
    shell.start("fleetloop cloud --wire-dtype bfloat16", "cloud", extra="--round-episodes 2")
    shell.wait_log("cloud", r"gateway listening on")
    shell.start(PANDA_EDGE, "robot-1")
    # The carts come and go while the Panda's learner publishes its first versions.
    for line, name in (
        ("fleetloop edge --robot sim:pusht --id cart-1 --remote-policy", "cart-remote"),
        ("fleetloop edge --robot sim:pusht --id cart-1 --preload lerobot", "cart-preload"),
    ):
        cart = shell.start(line, name)
        wait_until(lambda: cart_state(shell) not in ("", "lost"), 90, f"cart-1 ({name}) online in the fleet")
        assert cart.poll() is None, shell.log(name)[-2000:]
        shell.stop(name)
        wait_until(lambda: cart_state(shell) in ("", "lost"), 30, f"cart-1 ({name}) gone from the fleet")

    shell.wait_log("cloud", r"robot-1 now runs panda_pick_cube v4", timeout_s=180)
    sizes = [
        int(n) for n in re.findall(r"now runs panda_pick_cube v\d+ \(its update was (\d+) bytes", shell.log("cloud"))
    ]
    assert sizes and max(sizes) < 200_000, f"bf16 updates of the 2x256 MLP (~290 kB in float32): {sizes}"

    listing = shell.run("fleetloop policy list panda_pick_cube")
    assert all(f"v{n}" in listing for n in (1, 2, 3, 4)), listing
    before = registry_versions(root, "panda_pick_cube")
    shell.run("fleetloop policy rollback panda_pick_cube --to 3")
    after = registry_versions(root, "panda_pick_cube")
    assert max(after) > max(before), (before, after)
    shell.stop("robot-1")
    shell.stop("cloud")

    episodes = stored_steps(root, "panda_pick_cube")
    out = shell.run("fleetloop export --root fleetloop-data --dataset panda_pick_cube --out panda-lerobot", 300)
    assert (shell.cwd / "panda-lerobot" / "meta" / "info.json").is_file(), out
    out = shell.run("fleetloop import --root fleetloop-data --from panda-lerobot", 300)
    assert re.search(r"imported \d+ episodes", out), out
    assert stored_steps(root, "panda_pick_cube") > episodes


@pytest.mark.timeout(900)
def test_learner_commands(shell: Shell) -> None:
    """On a folder with operator demonstrations, each learner command of the README publishes a version."""
    shell.start("fleetloop cloud --root fleetloop-data --port 7070 --no-learner", "cloud")
    shell.wait_log("cloud", r"gateway listening on")
    shell.start(PANDA_EDGE, "robot-1")
    shell.wait_log("robot-1", r"episode 4 ", timeout_s=120)
    shell.stop("robot-1")
    shell.stop("cloud")
    shell.run(ACT_JSON)
    recorded = shell.cwd
    lines = (
        "fleetloop learner --algorithm sac --demo-ratio 0.5",
        "fleetloop learner --policy panda_pick_cube=act --policy-config panda_pick_cube=act.json --train-steps 200",
        "fleetloop learner --algorithm sac --sample-ratios online=0.5,intervention+demo=0.5 --staleness-budget 4 "
        "--staleness-mode downweight",
        "torchrun --nproc_per_node=2 -m fleetloop.distributed_learner --backend gloo",
        "fleetloop learner --root fleetloop-data --track wandb",
    )
    for i, line in enumerate(lines):
        # Each line is another way to run the learner: each starts from the recorded episodes and no versions.
        shell.cwd = recorded / f"learner-{i}"
        shutil.copytree(recorded / "fleetloop-data" / "store", shell.cwd / "fleetloop-data" / "store")
        shutil.copy(recorded / "act.json", shell.cwd / "act.json")
        shell.start(line, "learner")
        wait_until(
            lambda: registry_versions(shell.cwd / "fleetloop-data", "panda_pick_cube"), 240, f"a version from `{line}`"
        )
        assert "Traceback" not in shell.log("learner"), shell.log("learner")[-3000:]
        shell.stop("learner")
    # No W&B login here: the run stayed offline in the data folder, its curves in it (what `wandb sync` uploads).
    [run] = (shell.cwd / "fleetloop-data" / "runs" / "panda_pick_cube" / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"train/loss" in run.read_bytes()


LAB_ACT = "outputs/train/act_panda/checkpoints/last/pretrained_model"


@pytest.mark.timeout(900)
def test_lab_policy_commands(shell: Shell) -> None:
    """A lab's lerobot ACT (here a tiny one that lerobot's save_pretrained wrote where lerobot-train puts it) is
    published for the Panda and refused for pusht; a robot runs it; the learner fine-tunes it from the registry, then
    from the folder."""
    from tests.policies.pretrained_folders import panda_act_folder

    panda_act_folder(shell.cwd / LAB_ACT)
    root = shell.cwd / "fleetloop-data"
    out = shell.run(
        f"fleetloop policy publish panda_pick_cube --root fleetloop-data --robot sim:panda_pick_cube --from {LAB_ACT}"
    )
    assert "panda_pick_cube v1 published from" in out and "checked against robot panda_pick_cube" in out, out
    out = shell.run(f"fleetloop policy publish pusht --root fleetloop-data --robot sim:pusht --from {LAB_ACT}", code=2)
    assert "observation.state: the policy expects shape [21], robot pusht gives [2]" in out, out
    assert registry_versions(root, "pusht") == []

    shell.start("fleetloop cloud --root fleetloop-data --port 7070 --no-learner", "cloud")
    shell.wait_log("cloud", r"gateway listening on")
    shell.start(PANDA_EDGE, "robot-1")
    shell.wait_log("robot-1", r"switched to policy panda_pick_cube v1", timeout_s=120)
    # It resumes from the published v1 and trains once 2 more episodes have finished instead of 5 (~6 s sooner).
    line = "fleetloop learner --root fleetloop-data --init panda_pick_cube=registry --train-steps 200"
    shell.start(line, "learner", extra="--round-episodes 2")
    shell.wait_log("learner", r"published panda_pick_cube v2: hg-dagger \(lerobot act\) from panda_pick_cube v1", 300)
    shell.stop("learner")
    shell.start(
        f"fleetloop learner --root fleetloop-data --train-steps 200 --init panda_pick_cube={LAB_ACT}", "learner-folder"
    )
    shell.wait_log(
        "learner-folder", r"published panda_pick_cube v3: hg-dagger \(lerobot act\) from /\S+pretrained_model", 300
    )
    shell.wait_log("robot-1", r"switched to policy panda_pick_cube v3", timeout_s=60)
