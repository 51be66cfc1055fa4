"""Fixtures and markers for the whole suite.

Markers (registered in pyproject.toml; `pytest -m "not e2e"` runs the fast unit tests alone):
- ``e2e``: every test under tests/e2e/ (real processes, servers, browsers), marked here by folder;
- ``ros2``: every test that asks for a ``ros_domain`` (it starts ROS 2 participants), marked here by fixture.

Fixtures: ``ros_domain`` (a fresh ROS_DOMAIN_ID from this xdist worker's range), ``fastdds_profile`` (the shipped
Fast DDS profile for the test's participants) and ``ros2_sim_node`` (starts ``hal.ros2_sim_node`` processes on it
and always stops them), ``two_torch_threads`` (torch on two threads for the test: the machine's two cores, shared
with the other pytest worker), ``s3_server`` (moto's S3 API server on loopback, one per pytest worker) and ``s3_url``
(``s3://<a fresh bucket>/fleet`` on it, with the ``AWS_*`` variables set for the test and the processes it starts).
tests/e2e/conftest.py adds the ``fleet`` of real processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.ros2_domains import domain_ids
from tests.s3_server import S3Server, start_s3_server

ROOT = Path(__file__).resolve().parents[1]
E2E = ROOT / "tests" / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The end-to-end tests first: the long ones start early and the short unit tests fill the workers' last minutes,
    # rather than one worker finishing a long test alone at the end.
    # The README's scenarios (minutes each, several processes) lead them.
    items.sort(key=lambda item: (not item.path.is_relative_to(E2E), item.path.name != "test_readme_commands.py"))
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)
        if "ros_domain" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ros2)


@pytest.fixture
def two_torch_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.new_bucket()}/fleet"


@pytest.fixture(scope="session")
def _worker_domains() -> Iterator[int]:
    return domain_ids()


@pytest.fixture
def ros_domain(_worker_domains: Iterator[int]) -> int:
    """A ROS_DOMAIN_ID no other test of this run uses at the same time: parallel workers and nodes left over
    from an earlier test never cross-talk."""
    return next(_worker_domains)


# The transport `fleetloop edge --robot ros2:...` ships, which the README asks robot nodes on the edge's host to load
# too. Over the default UDP transport, beside the 30 Hz image stream on a loaded machine, a joint state sometimes
# came more than 2 s late (the image test failed in 5 of 18 runs beside two busy loops; a 100 ms writer heartbeat
# did not help: 2 of 14); with this profile it failed in none of 9.
FASTDDS_PROFILE = ("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "launch" / "ros2" / "fastdds_shm.xml"))


@pytest.fixture
def fastdds_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped Fast DDS profile for this test's participants (unless one is set): Fast DDS reads it at this
    process's first participant, and the nodes started here get it too. Set for the test only, so no other test's
    processes inherit it."""
    if FASTDDS_PROFILE[0] not in os.environ:
        monkeypatch.setenv(*FASTDDS_PROFILE)


SimNode = Callable[..., subprocess.Popen]


@pytest.fixture
def ros2_sim_node(fastdds_profile: None) -> Iterator[SimNode]:
    """``start(domain, *args, seed=0, env=None, log=None)`` runs ``hal.ros2_sim_node`` on that domain (``env``:
    the whole environment, default this one with MUJOCO_GL=egl unless set; either way with the Fast DDS profile
    unless it names one; ``log``: a file for its output, default none); every node started is stopped afterwards
    (SIGTERM, then SIGKILL)."""
    processes: list[subprocess.Popen] = []

    def start(
        domain: int, *args: str, seed: int = 0, env: Mapping[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen:
        node_env = env if env is not None else {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (the child holds it from here)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "hal.ros2_sim_node", "--domain-id", str(domain), "--seed", str(seed), *args],
                cwd=ROOT,
                env={FASTDDS_PROFILE[0]: FASTDDS_PROFILE[1], **node_env},
                stdout=output,
                stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
            )
        finally:
            if log:
                output.close()
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
