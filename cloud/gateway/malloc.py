"""glibc's malloc tuned for a process whose messages are hundreds of kB: freed buffers are reused, not unmapped.

By default glibc serves each allocation past its mmap threshold (128 kB, raised only as such blocks are freed) with
fresh pages from the kernel and returns them on free. A camera batch of 555 kB then costs a page fault and a zeroed
page per 4 kB, twice or three times per message (the received bytes, the parsed message, the decoded arrays): in
bench (a) on this project's VMs that was a tenth of the gateway's CPU. Kept in malloc's heap, the same memory is
reused from message to message; what stays free past ``trim_bytes`` goes back to the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("fleetloop.gateway")

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3


def reuse_large_buffers(mmap_bytes: int = 32 << 20, trim_bytes: int = 128 << 20) -> bool:
    """Allocations below ``mmap_bytes`` come from the heap, which keeps up to ``trim_bytes`` free for reuse. False
    where the C library has no ``mallopt`` (not glibc): the process goes on with its defaults."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, mmap_bytes) == 1 and mallopt(M_TRIM_THRESHOLD, trim_bytes) == 1
    if not done:
        log.debug("mallopt refused the thresholds; malloc keeps its defaults")
    return done
