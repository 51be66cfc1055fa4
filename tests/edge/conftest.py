"""``make_spool``: each spool test runs on both spools, the SQLite one and the segment log the edge uses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge.segment_spool import open_spool
from edge.spool import Spool, SpoolStore


@pytest.fixture(params=["sqlite", "segments"])
def make_spool(request: pytest.FixtureRequest) -> Callable[[Path], SpoolStore]:
    return Spool if request.param == "sqlite" else open_spool
