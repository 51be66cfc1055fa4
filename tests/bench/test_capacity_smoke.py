"""Bench (m) reduced: simulated two-camera robots replaying pre-encoded H.264 (and raw) into a real gateway."""

from __future__ import annotations

from bench.run import run_bench


def test_quick_capacity_rows_count_robots_that_held(tmp_path) -> None:
    results = run_bench(figures=("capacity",), quick=True, out=tmp_path / "results.json")
    robots = next(r for r in results if r.unit == "robots")
    assert 1 <= robots.value <= 4 and 0 <= robots.baseline <= 4, robots  # counts from the ramp (1, 4)
    wire = next(r for r in results if r.unit == "B")
    assert 0 < wire.ratio <= 0.05, wire  # two H.264 cameras vs their raw frames
    lags = [r for r in results if r.unit == "ms"]
    assert lags and all(0 < r.baseline <= r.value < 2000 for r in lags), lags  # p50 <= p99 < the 2 s limit
    assert "H.264" in lags[0].name, lags
