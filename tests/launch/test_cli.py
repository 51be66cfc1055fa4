import subprocess
import sys

import pytest

from launch.cli import build_parser


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["edge", "--robot", "sim:x", "--id", "r", "--hz", "-3"], "--hz"),
        (["demo", "--robots", "0"], "--robots"),
        (["cloud", "--round-episodes", "0"], "--round-episodes"),
        (["edge", "--id", "r"], "--robot"),
    ],
)
def test_bad_flags_name_the_flag(argv: list[str], flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_unknown_robot_is_refused_with_the_choices() -> None:
    result = run("edge", "--robot", "sim:nonsense", "--id", "r1")
    assert result.returncode == 2
    assert "--robot" in result.stderr and "panda_pick_cube" in result.stderr


def test_cloud_refuses_to_listen_beyond_loopback_without_tls(tmp_path) -> None:
    result = run("cloud", "--host", "0.0.0.0", "--root", str(tmp_path), "--no-learner")
    assert result.returncode == 2
    assert "loopback only" in result.stderr
