"""How a long-running command learns it should stop (SIGINT or SIGTERM set an event), and how it ends."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import NoReturn


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def exit_after_clean_stop(code: int) -> NoReturn:
    """Ends the process once its work is durable (the edge's spool committed, its tunnel and driver closed),
    skipping the interpreter's teardown: native threads of the libraries a policy loaded (torch, lerobot's,
    gRPC's) can abort the process while Python tears down around them ("terminate called without an active
    exception", exit -6, seen once in CI after a clean stop), which would turn a clean stop into a crash."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
