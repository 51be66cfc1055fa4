"""ROS_DOMAIN_IDs for tests: each pytest-xdist worker draws from a range of its own.

Two tests on one domain see each other's topics (a node left over from one test answers the next), so every
test that starts ROS 2 participants takes a fresh domain from its worker's range; tests/conftest.py hands them out.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping

# Inside 0-101, the IDs ROS 2 documents as safe everywhere (on Linux, higher ones put DDS ports among the ephemeral
# ports from 32768), above the single digits people pick by hand (the README's 7), below bench/ros2_image.py's 100-199.
DOMAIN_IDS = range(10, 100)


def worker_range(environ: Mapping[str, str] = os.environ, ids: range = DOMAIN_IDS) -> range:
    """This worker's share of ``ids``: xdist names workers gw0, gw1, ... (no variable: a single process)."""
    worker = environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw"))
    if not 0 <= index < count <= len(ids):
        raise ValueError(f"worker {worker} of {count} cannot have a share of {len(ids)} domain ids")
    share = len(ids) // count
    return ids[index * share : (index + 1) * share]


def domain_ids(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> Iterator[int]:
    """Endless fresh domains from this worker's range. The start depends on the process id, so two test runs
    at once on one machine (two checkouts) most likely start apart as well."""
    share = worker_range(environ)
    start = (os.getpid() if pid is None else pid) % len(share)
    return (share[(start + n) % len(share)] for n in itertools.count())
