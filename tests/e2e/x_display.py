"""A virtual X display for tests that type like a person: Xvfb picks a free display, xdotool sends the keys.

Both are Debian packages (scripts/bootstrap.sh installs them); without them a test that asks for a display fails
and says what to install, it is not skipped.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def x_display() -> Iterator[str]:
    """A fresh Xvfb on a display number it picks itself (parallel tests never share one), as ":N"."""
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not installed: this test types on a virtual X display. Install them with "
            "`apt-get install xvfb xdotool` (scripts/bootstrap.sh does on a fresh machine)"
        )
    read, write = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "320x240x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30)
        assert ready, "Xvfb did not say which display it took within 30 s"
        number = os.read(read, 64).decode().strip()
        assert number.isdigit(), f"Xvfb said {number!r} instead of a display number"
        yield f":{number}"
    finally:
        os.close(read)
        server.terminate()
        server.wait(timeout=10)


def press(display: str, *args: str) -> None:
    """``xdotool <args>`` on ``display``: ``press(d, "key", "space")``, ``press(d, "keydown", "Up")``."""
    subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display}, check=True, timeout=10)
