"""The ``fleet`` fixture: the real cloud and edges as processes, each test in its own folder on a free port.

A test (or a module, through ``pytestmark``) marked ``@pytest.mark.cloud(*args, learner=False)`` finds the
cloud already listening, started with those arguments; unmarked, it starts what it needs itself
(``fleet.start_cloud``, ``fleet.start_edge``, ``fleet.start_learner``). Either way every process the fleet started
is stopped after the test. Helpers that start the processes live in tests/e2e/fleet.py.

``reach_versions``: ``point_reach`` policy versions trained by the learner, for the canary tests (once per process).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.e2e.fleet import Fleet

if TYPE_CHECKING:
    from tests.e2e.reach_versions import ReachVersions


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    try:
        marker = request.node.get_closest_marker("cloud")
        if marker is not None:
            fleet.start_cloud(*marker.args, **marker.kwargs)
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture(scope="session")
def reach_versions(tmp_path_factory: pytest.TempPathFactory) -> ReachVersions:
    """``point_reach`` versions the learner trained (early, good, corrupted; tests/e2e/reach_versions.py), once per
    test process, checked in the sim to be ordered as the canary tests need."""
    from tests.e2e.reach_versions import check_premises, train_versions  # the learner: only the tests that train

    trained = train_versions(tmp_path_factory.mktemp("reach_versions"))
    check_premises(trained)
    return trained
