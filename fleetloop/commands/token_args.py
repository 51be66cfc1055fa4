"""A device's token for the commands that connect (`fleetloop edge`, `fleetloop fleet`): from ``FLEETLOOP_TOKEN`` or
``--token-file PATH``, never from the command line, which every user of the machine reads in `ps`."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TOKEN_ENV = "FLEETLOOP_TOKEN"
MAX_TOKEN_FILE_BYTES = 4096  # a token is about 50 characters; anything much larger is the wrong file


class _RefusedOnTheCommandLine(argparse.Action):
    """``--token``: refused (exit 2) before anything starts, saying what to use instead."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string}: a token on the command line is visible to every user of this machine (ps, "
            f"/proc/<pid>/cmdline); set {TOKEN_ENV}=<token> or give --token-file PATH (a file only you can read)"
        )


def add_token_args(parser: argparse.ArgumentParser, whose: str) -> None:
    """``--token-file`` for ``whose`` token (e.g. "this device's"), and a ``--token`` that is refused."""
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"a file holding {whose} token, readable by its owner only (chmod 600); or set {TOKEN_ENV}",
    )
    parser.add_argument("--token", action=_RefusedOnTheCommandLine, help=argparse.SUPPRESS)


def read_token(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> str:
    """The token of ``--token-file`` or of ``FLEETLOOP_TOKEN`` ("" for none); ValueError naming the flag (or the
    variable) when both are given, or the file is unsafe or unreadable."""
    from_env = environ.get(TOKEN_ENV, "")
    if args.token_file is None:
        return from_env.strip()
    if from_env:
        raise ValueError(f"--token-file: {TOKEN_ENV} is set too; give the token one way")
    return token_from_file(args.token_file)


def token_from_file(path: Path) -> str:
    """The token in ``path``: a regular file owned by this user that no one else may read or write, as ssh asks of
    a private key; ValueError naming --token-file otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)  # a FIFO here must not hang the start
    except OSError as err:
        raise ValueError(f"--token-file: cannot read {path}: {err.strerror}") from err
    try:
        _check_token_file(path, os.fstat(fd))  # the file opened, not whatever the path names a moment later
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(f"--token-file: {path} is over {MAX_TOKEN_FILE_BYTES} bytes; it holds one token")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"--token-file: {path} is not text; it holds one token (flt_...)") from None
    if not token:
        raise ValueError(f"--token-file: {path} is empty")
    if any(ch.isspace() for ch in token):
        raise ValueError(f"--token-file: {path} holds more than one word; it holds one token (flt_...)")
    return token


def _check_token_file(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"--token-file: {path} is not a regular file")
    if info.st_uid != os.getuid():
        raise ValueError(f"--token-file: {path} belongs to another user (uid {info.st_uid}); a token file is yours")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ValueError(
            f"--token-file: {path} is open to other users (mode {mode:04o}); `chmod 600 {path}`, and if others "
            "may have read it, revoke the token and issue a new one"
        )
