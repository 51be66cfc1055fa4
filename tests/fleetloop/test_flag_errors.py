"""Every flag is checked at start with an error naming it, and what goes wrong later says which thing it was: a
missing robot file, a refused credential, an unresolvable host, a certificate that does not name the address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from cloud.data.store import EpisodeStore
from cloud.security.devices import DeviceRegistry
from tests.e2e.fleet import Fleet, free_port, wait_until


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def run(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``env``: added to this environment (FLEETLOOP_TOKEN is not passed on unless given)."""
    environ = {k: v for k, v in os.environ.items() if k != "FLEETLOOP_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["cloud", "--openpi-port", "seventy"], "argument --openpi-port: invalid port value: 'seventy'"),
        (["edge", "--robot", "sim:pusht", "--id", "r", "--cloud", "cloud.lab"], "argument --cloud: must be HOST:PORT"),
        (["fleet", "--cloud", "127.0.0.1:0"], "argument --cloud: must be HOST:PORT with a port in 1-65535"),
        (["edge", "--robot", "sim:pusht", "--id", "r", "--episodes", "-1"], "argument --episodes: must be >= 0"),
        (["edge", "--robot", "sim:pusht", "--id", "r", "--duration", "-5"], "argument --duration: must be >= 0"),
        (["edge", "--robot", "sim:pusht", "--id", "r", "--outcome-ticks", "0"], "argument --outcome-ticks: must be >="),
    ],
)
def test_ports_and_addresses_are_checked_at_start(argv: list[str], says: str) -> None:
    result = run(*argv)
    assert result.returncode == 2 and says in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["--port", "99999"],
            "refusing to start: --port: gateway.port: should be less than or equal to 65535, got 99999",
        ),
        (["--phone-port", "-1"], "refusing to start: --phone-port: phone.port: should be greater than or equal to 0"),
        (["--phone-image", "4x4000"], "refusing to start: --phone-image: phone.image_height: should be greater than"),
        (["--lost-after", "0"], "refusing to start: --lost-after: gateway.lost_after_s: should be greater than 0"),
        (["--inference-threads", "0"], "refusing to start: --inference-threads: gateway.inference_threads: should be"),
        (["--pairing-minutes", "0"], "refusing to start: --pairing-minutes: phone.pairing_ttl_s: should be greater"),
        (["--canary", "1.5"], "refusing to start: --canary: gateway.canary: a share below 1 (0.25) or a whole number"),
        (["--canary", "-0.2"], "refusing to start: --canary: gateway.canary: should be greater than or equal to 0"),
        (["--canary-episodes", "0"], "refusing to start: --canary-episodes: gateway.canary_episodes: should be"),
        (
            ["--canary-episodes", "8", "--canary-max-episodes", "4"],
            "refusing to start: --canary-max-episodes: gateway.canary_max_episodes: 4 is fewer than canary_episodes",
        ),
    ],
)
def test_the_cloud_configs_check_their_flags_at_start(tmp_path, argv: list[str], says: str) -> None:
    """The gateway's and the phone channel's configs check these fields; the error names the flag."""
    result = run("cloud", "--root", str(tmp_path / "data"), "--no-learner", *argv)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert not (tmp_path / "data" / "store").exists()  # nothing was opened


def test_the_cloud_checks_everything_before_it_starts_anything(tmp_path) -> None:
    config = tmp_path / "act.json"
    config.write_text('{"chunk_size": 10}')
    root = str(tmp_path / "data")
    result = run("cloud", "--root", root, "--policy-config", f"pusht={config}")  # the learner's flags too
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "refusing to start: --policy-config pusht=...: name its policy type too" in result.stderr
    assert not (tmp_path / "data" / "store").exists()  # nothing was opened

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("cloud", "--root", root, "--no-learner", "--port", str(port))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"refusing to start: --port {port}: cannot listen on 127.0.0.1" in result.stderr

    with EpisodeStore(tmp_path / "data" / "store"):  # another cloud holds the store
        result = run("cloud", "--root", root, "--no-learner", "--port", str(free_port()))
    assert result.returncode == 2 and "refusing to start: --root: another process writes" in result.stderr


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--outcome-threshold", "1.5"], "--outcome-threshold: outcome.threshold: should be less than 1"),
        (["--outcome-from", "pusht"], "--outcome-from: tunnel.outcome_policy: names the policy it runs (pusht)"),
    ],
)
def test_the_outcome_classifiers_flags_are_checked_at_start(argv: list[str], says: str) -> None:
    result = run("edge", "--robot", "sim:pusht", "--id", "r", "--operator", "none", *argv)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_missing_ros2_robot_file_is_named_without_a_traceback(tmp_path) -> None:
    result = run("edge", "--robot", "ros2:missing.yaml", "--id", "r1")
    assert result.returncode == 2
    assert "--robot: missing.yaml: cannot read" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def secured(tmp_path):
    """A cloud on loopback with a devices file (so fleet control wants an operator's credential)."""
    devices = DeviceRegistry(tmp_path / "data" / "devices.json")
    token = devices.add("alice", kind="operator")
    fleet = Fleet(tmp_path)
    fleet.start_cloud()
    robot = "a-robot-whose-name-is-long-enough-to-widen-the-table"
    robot_token = devices.add(robot, policies=("pusht",))
    fleet.start_edge(robot, "--operator", "none", robot="sim:pusht", env={"FLEETLOOP_TOKEN": robot_token})
    wait_until(lambda: f"{robot} connected" in fleet.log("cloud"), 60, "the robot to connect")
    yield fleet, token
    fleet.stop_all()


def test_fleet_says_the_credential_was_refused_and_prints_whole_tables_to_a_file(secured) -> None:
    fleet, token = secured
    refused = run("fleet", "--cloud", fleet.target, env={"FLEETLOOP_TOKEN": "flt_not-a-token"})
    assert refused.returncode == 1
    assert f"the cloud at {fleet.target} refused the credential" in refused.stdout + refused.stderr
    assert "cannot reach" not in refused.stdout + refused.stderr
    command = run("fleet", "pause", "robot-9", "--cloud", fleet.target)  # no token at all
    assert command.returncode == 1 and "refused the credential (authorization: no credential given)" in command.stderr

    token_file = fleet.root / "alice.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    shown = run("fleet", "--cloud", fleet.target, "--token-file", str(token_file))  # stdout a pipe, as in `> file`
    assert shown.returncode == 0, shown.stderr
    assert "a-robot-whose-name-is-long-enough-to-widen-the-table" in shown.stdout  # whole, not cut at 80 columns
    assert "interventions" in shown.stdout and max(len(line) for line in shown.stdout.splitlines()) > 80


def edge_log(tmp_path, cloud: str, ca: str) -> str:
    """A few seconds of an edge dialling ``cloud``: what it logged."""
    result = run(
        "edge",
        *("--robot", "sim:pusht", "--id", "r1", "--operator", "none", "--duration", "4"),
        *("--cloud", cloud, "--ca", ca, "--spool", str(tmp_path / "spool.db")),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_the_edge_says_why_the_link_fails(tmp_path) -> None:
    assert run("certs", "init", "--root", str(tmp_path / "data")).returncode == 0
    ca = str(tmp_path / "data" / "certs" / "ca.pem")
    unresolvable = edge_log(tmp_path, "nosuch.invalid:7070", ca)
    assert "link to the cloud at nosuch.invalid:7070 lost (nosuch.invalid does not resolve to an address)" in (
        unresolvable
    )
    # It retried several times in its 4 s; the log says so once, not once a retry.
    assert unresolvable.count("link to the cloud at nosuch.invalid:7070") == 1, unresolvable

    # The certificate names localhost, 127.0.0.1 and ::1; the cloud listens on another loopback address.
    port = free_port()
    cloud = subprocess.Popen(
        [sys.executable, "-m", "fleetloop.cli", "cloud", "--root", str(tmp_path / "data"), "--no-learner"]
        + ["--tls", "--host", "127.0.0.2", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: listening("127.0.0.2", port), 60, "the cloud to listen")
        unnamed = edge_log(tmp_path, f"127.0.0.2:{port}", ca)
    finally:
        cloud.terminate()
        cloud.wait(timeout=30)
    assert "lost (the cloud's certificate does not name 127.0.0.2" in unnamed, unnamed
    assert "certs init --host 127.0.0.2 --force" in unnamed
