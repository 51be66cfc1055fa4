"""The gateway's malloc tuning: large buffers come from the heap, so a freed one is reused, not unmapped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import resource, sys
from cloud.gateway.malloc import reuse_large_buffers
if sys.argv[1] == "tuned":
    assert reuse_large_buffers()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for burst in range(10):  # the gateway holds a burst of camera batches until the store has them, then frees them
    held = [bytearray(555_000) for _ in range(40)]
    del held
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(done.stdout)


def test_freed_camera_sized_buffers_are_reused_instead_of_faulted_in_again() -> None:
    default, tuned = faults("default"), faults("tuned")
    assert tuned < default / 4, (
        f"page faults for 10 bursts of 40 buffers of 555 kB: {tuned} tuned, {default} by default"
    )
