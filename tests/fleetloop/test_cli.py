import os
import subprocess
import sys

import pytest

from fleetloop.cli import build_parser
from tests.e2e.fleet import free_port


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetloop.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["edge", "--robot", "sim:x", "--id", "r", "--hz", "-3"], "--hz"),
        (["edge", "--id", "r"], "--robot"),
        (["edge", "--robot", "sim:x", "--id", "r", "--model-root", "models"], "--model-root"),
        (["cloud", "--model-root", "/no/such/folder"], "--model-root"),
        (["policy", "publish", "p", "--model-root", "relative/models"], "--model-root"),
    ],
)
def test_bad_flags_name_the_flag(argv: list[str], flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_a_bad_demo_flag_stops_the_demo_naming_the_flag() -> None:
    """The demo config checks its fields; the error names the flag that set the field."""
    result = run("demo", "--robots", "0")
    assert result.returncode == 2
    assert "--robots: demo.robots: " in result.stderr


def test_a_bad_learner_flag_stops_the_cloud_naming_the_flag(tmp_path) -> None:
    """The learner config checks its fields; the error names the flag that set the field."""
    result = run("cloud", "--round-episodes", "0", "--root", str(tmp_path))
    assert result.returncode == 2
    assert "--round-episodes: learner.round_episodes: " in result.stderr


def test_a_bad_model_root_in_the_environment_stops_the_cloud_naming_it(tmp_path) -> None:
    """FLEETLOOP_MODEL_ROOTS is decided at start: a root that is no absolute folder refuses the start, not a policy
    later."""
    command = [sys.executable, "-m", "fleetloop.cli", "cloud", "--root", str(tmp_path), "--no-learner", "--port", "0"]
    env = {**os.environ, "FLEETLOOP_MODEL_ROOTS": "models"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "refusing to start: FLEETLOOP_MODEL_ROOTS: 'models' must be an absolute folder" in result.stderr


def test_unknown_robot_is_refused_with_the_choices() -> None:
    result = run("edge", "--robot", "sim:nonsense", "--id", "r1")
    assert result.returncode == 2
    assert "--robot" in result.stderr and "panda_pick_cube" in result.stderr


def test_cloud_refuses_to_listen_beyond_loopback_without_tls_and_credentials(tmp_path) -> None:
    beyond = ("cloud", "--host", "0.0.0.0", "--root", str(tmp_path), "--no-learner")
    result = run(*beyond)
    assert result.returncode == 2
    assert "--host 0.0.0.0: beyond loopback the cloud speaks TLS only" in result.stderr
    result = run(*beyond, "--tls")
    assert result.returncode == 2 and "--tls: no certificates" in result.stderr
    assert run("certs", "init", "--root", str(tmp_path)).returncode == 0
    result = run(*beyond, "--tls")
    assert result.returncode == 2 and "every device needs a credential" in result.stderr


def test_edge_refuses_plain_text_to_a_remote_cloud() -> None:
    result = run("edge", "--robot", "sim:pusht", "--id", "r1", "--cloud", "10.0.0.7:7070")
    assert result.returncode == 2
    assert "--cloud 10.0.0.7:7070 is not on this machine" in result.stderr


def test_devices_add_list_revoke(tmp_path) -> None:
    added = run("devices", "add", "robot-1", "--root", str(tmp_path), "--policy", "pick")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("flt_") and token not in added.stderr
    listed = run("devices", "list", "--root", str(tmp_path))
    assert "robot-1" in listed.stdout and "active" in listed.stdout and token not in listed.stdout
    assert run("devices", "revoke", "robot-1", "--root", str(tmp_path)).returncode == 0
    assert "revoked" in run("devices", "list", "--root", str(tmp_path)).stdout
    again = run("devices", "add", "bad id", "--root", str(tmp_path))
    assert again.returncode == 2 and "id:" in again.stderr
    again = run("devices", "add", "robot-1", "--root", str(tmp_path))  # ids are never reused
    assert again.returncode == 2 and "never reused" in again.stderr
    bound = ("--embodiment", "pusht", "--embodiment", "pusht_v2", "--source", "sim", "--policy", "pusht")
    assert run("devices", "add", "cart-1", "--root", str(tmp_path), *bound).returncode == 0
    listed = run("devices", "list", "--root", str(tmp_path)).stdout
    assert "pusht_v2" in listed and "sim" in listed
    wrong = run("devices", "add", "cart-2", "--root", str(tmp_path), "--embodiment", "push t")
    assert wrong.returncode == 2 and "embodiment:" in wrong.stderr


def test_the_pairing_url_names_an_address_a_phone_can_dial(tmp_path, caplog) -> None:
    from cloud.channels.phone_address import phone_url_host
    from cloud.security.certs import init_certs

    cert = init_certs(tmp_path / "certs", hosts=("cloud.lab.example", "10.1.2.3")).server_cert
    assert phone_url_host("", "127.0.0.1", None) == "127.0.0.1"
    assert phone_url_host("", "0.0.0.0", cert) == "cloud.lab.example"  # every interface: the certificate's name
    assert phone_url_host("10.1.2.3", "0.0.0.0", cert) == "10.1.2.3"
    assert phone_url_host("", "0.0.0.0", cert, lan="10.1.2.3") == "10.1.2.3"  # the LAN address, when named
    assert "does not" not in caplog.text
    assert phone_url_host("192.168.9.9", "0.0.0.0", cert) == "192.168.9.9"
    assert "certs init --host 192.168.9.9" in caplog.text  # the phone would refuse the certificate: say how to fix


def test_an_edge_whose_robot_has_no_scripted_operator_runs_without_one(tmp_path) -> None:
    # No --operator: pusht has no scripted operator, so the edge runs with none (here it waits for a cloud).
    port = free_port()
    args = ["edge", "--robot", "sim:pusht", "--id", "cart-1", "--cloud", f"127.0.0.1:{port}", "--duration", "1"]
    result = run(*args, "--spool", str(tmp_path / "spool.db"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("no scripted operator for pusht: the policy alone drives") == 1
    refused = run(*args, "--spool", str(tmp_path / "spool.db"), "--operator", "scripted")
    assert refused.returncode == 2 and "--operator scripted: no scripted operator for pusht" in refused.stderr
