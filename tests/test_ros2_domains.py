"""Each xdist worker draws ROS_DOMAIN_IDs from a range of its own."""

from __future__ import annotations

import itertools

import pytest

from tests.ros2_domains import DOMAIN_IDS, domain_ids, worker_range


def test_two_workers_get_disjoint_ranges_and_one_process_gets_them_all() -> None:
    gw0 = worker_range({"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2"})
    gw1 = worker_range({"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"})
    assert gw0 and gw1 and not set(gw0) & set(gw1)
    assert set(gw0) | set(gw1) <= set(DOMAIN_IDS)
    assert worker_range({}) == DOMAIN_IDS


def test_a_worker_hands_out_fresh_ids_from_its_range_only() -> None:
    environ = {"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"}
    share = worker_range(environ)
    ids = list(itertools.islice(domain_ids(environ, pid=12345), len(share)))
    assert sorted(ids) == list(share)


def test_more_workers_than_ids_is_refused() -> None:
    with pytest.raises(ValueError, match="gw3 of 4"):
        worker_range({"PYTEST_XDIST_WORKER": "gw3", "PYTEST_XDIST_WORKER_COUNT": "4"}, ids=range(3))
