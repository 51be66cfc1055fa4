"""Reduced benchmarks (uplink, spool, LoRA delta, foresight, weighting, takeover): positive figures and ratios against
baselines."""

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


def test_quick_spool_bench_measures_both_spools_on_the_same_batches(tmp_path) -> None:
    results = run_bench(figures=("spool",), quick=True, out=tmp_path / "results.json")
    assert [r.unit for r in results] == ["ms/MB", "ms/MB"]
    assert all(r.value > 0 and r.baseline > 0 for r in results), results


def test_quick_delta_bench_sends_a_small_share_of_a_full_push(tmp_path) -> None:
    results = {r.unit: r for r in run_bench(figures=("delta",), quick=True, out=tmp_path / "results.json")}
    assert 0 < results["B"].value < 0.05 * results["B"].baseline  # bytes: a LoRA delta vs the whole model
    assert results["s"].value > 0 and results["s"].baseline > 0


def test_quick_foresight_bench_answers_within_budget(tmp_path) -> None:
    started = time.monotonic()
    results = run_bench(figures=("foresight",), quick=True, out=tmp_path / "results.json")
    assert time.monotonic() - started < 15
    assert len(results) == 2  # p50 and p99, each against a websockets echo of the same frame
    for result in results:
        assert result.unit == "ms" and result.value > 0 and result.baseline > 0, result
        assert result.ratio is not None and result.ratio > 0, result
    p50, p99 = results
    assert p50.value < 150, p50  # the phone page's budget for a trajectory
    assert p99.value >= p50.value and p99.baseline >= p50.baseline


def test_quick_weighting_bench_learns_more_where_the_foresight_was_wrong(tmp_path) -> None:
    results = run_bench(figures=("weighting",), quick=True, out=tmp_path / "results.json")
    wrong, right, both = results
    assert "wrong" in wrong.name and "right" in right.name and "both" in both.name
    assert wrong.ratio < 0.8, wrong  # v2 is better where v1's foresight was wrong than with even sampling
    assert all(r.value > 0 and r.baseline > 0 for r in results)


def test_quick_takeover_bench_times_a_press_to_the_driver(tmp_path) -> None:
    p50, p99 = run_bench(figures=("takeover",), quick=True, out=tmp_path / "results.json")
    for result in (p50, p99):
        assert result.unit == "ms" and result.value > 0 and result.baseline > 0, result
    assert p99.value >= p50.value and "press -> edge" in p99.note


def test_quick_inference_bench_times_both_clients_against_the_model_and_compares_batching(tmp_path) -> None:
    results = run_bench(figures=("inference",), quick=True, out=tmp_path / "results.json")
    assert [r.name for r in results] == [
        "inference tunnel 1 client p50 vs model",
        "inference openpi 1 client p50 vs model",
        "inference 8 clients batched vs max_batch 1",
        "inference 8 clients batched vs max_batch 1, diffusion",
    ]
    for result in results:
        assert result.value > 0 and result.baseline > 0, result
    tunnel, openpi, mlp, diffusion = results
    assert tunnel.unit == openpi.unit == "ms" and mlp.unit == diffusion.unit == "replies/s"
    assert "MLP 8x1024" in mlp.note and "diffusion policy" in diffusion.note
    assert tunnel.value > tunnel.baseline and openpi.value > openpi.baseline  # a round trip holds the forward pass
