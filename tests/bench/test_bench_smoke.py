"""A reduced uplink benchmark (1 edge, few steps, and its raw gRPC baseline) gives positive figures and ratios."""

from __future__ import annotations

import json
import time

from bench.run import run_bench


def test_quick_uplink_gives_positive_values_and_ratios(tmp_path) -> None:
    out = tmp_path / "results.json"
    started = time.monotonic()
    results = run_bench(figures=("uplink",), quick=True, out=out)
    assert time.monotonic() - started < 40
    assert results
    for result in results:
        assert result.value > 0, result
        assert result.baseline > 0, result
        assert result.ratio is not None and result.ratio > 0, result
    saved = json.loads(out.read_text())
    assert [r["name"] for r in saved] == [r.name for r in results]
    for entry in saved:
        assert set(entry) >= {"name", "value", "unit", "baseline", "ratio"}
        assert entry["ratio"] == entry["value"] / entry["baseline"]


def test_quick_delta_bench_sends_a_small_share_of_a_full_push(tmp_path) -> None:
    results = {r.unit: r for r in run_bench(figures=("delta",), quick=True, out=tmp_path / "results.json")}
    assert 0 < results["B"].value < 0.05 * results["B"].baseline  # bytes: a LoRA delta vs the whole model
    assert results["s"].value > 0 and results["s"].baseline > 0
