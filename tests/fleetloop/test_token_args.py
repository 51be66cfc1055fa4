"""A device token comes from FLEETLOOP_TOKEN or --token-file, and a token file must be the owner's alone."""

from __future__ import annotations

import argparse
import os

import pytest

from fleetloop.commands.token_args import add_token_args, read_token

TOKEN = "flt_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fleetloop edge")
    add_token_args(parser, "this device's")
    return parser.parse_args(argv)


def token_file(tmp_path, text: str = TOKEN + "\n", mode: int = 0o600):
    path = tmp_path / "device.token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_token_comes_from_the_file_or_the_environment(tmp_path) -> None:
    assert read_token(parsed("--token-file", str(token_file(tmp_path))), environ={}) == TOKEN
    assert read_token(parsed(), environ={"FLEETLOOP_TOKEN": TOKEN + "\n"}) == TOKEN
    assert read_token(parsed(), environ={}) == ""  # none: the cloud says whether it wants one
    with pytest.raises(ValueError, match="--token-file: FLEETLOOP_TOKEN is set too"):
        read_token(parsed("--token-file", str(token_file(tmp_path))), environ={"FLEETLOOP_TOKEN": TOKEN})


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_token_file_others_may_open_is_refused_as_ssh_refuses_a_key(tmp_path, mode: int) -> None:
    path = token_file(tmp_path, mode=mode)
    with pytest.raises(ValueError, match=rf"--token-file: .* is open to other users \(mode {mode:04o}\); `chmod 600"):
        read_token(parsed("--token-file", str(path)), environ={})


@pytest.mark.parametrize(
    ("text", "says"),
    [("", "is empty"), ("\n  \n", "is empty"), (f"{TOKEN} {TOKEN}", "more than one word"), ("x" * 5000, "over 4096")],
)
def test_a_token_file_holds_one_token(tmp_path, text: str, says: str) -> None:
    with pytest.raises(ValueError, match=f"--token-file: .*{says}"):
        read_token(parsed("--token-file", str(token_file(tmp_path, text))), environ={})


def test_a_missing_file_or_a_directory_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="--token-file: cannot read .*nothing.token: No such file"):
        read_token(parsed("--token-file", str(tmp_path / "nothing.token")), environ={})
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="--token-file: .*folder is not a regular file"):
        read_token(parsed("--token-file", str(folder)), environ={})


def test_a_token_on_the_command_line_exits_2_saying_what_to_use(capsys) -> None:
    for argv in (["--token", TOKEN], [f"--token={TOKEN}"]):
        with pytest.raises(SystemExit) as exited:
            parsed(*argv)
        assert exited.value.code == 2
        said = capsys.readouterr().err
        assert "--token: a token on the command line is visible to every user" in said
        assert "FLEETLOOP_TOKEN=<token>" in said and "--token-file PATH" in said and TOKEN not in said


@pytest.mark.skipif(os.getuid() != 0, reason="only root can make a file another user owns")
def test_a_token_file_of_another_user_is_refused(tmp_path) -> None:
    path = token_file(tmp_path)
    os.chown(path, 12345, -1)
    with pytest.raises(ValueError, match="belongs to another user"):
        read_token(parsed("--token-file", str(path)), environ={})
