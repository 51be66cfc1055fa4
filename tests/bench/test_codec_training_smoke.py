"""Bench (n) reduced: the same demonstrations stored raw and as H.264 each train a version through the learner."""

from __future__ import annotations

from bench.run import run_bench


def test_quick_codec_training_rows_compare_h264_with_raw(tmp_path) -> None:
    success, error = run_bench(figures=("codec-training",), quick=True, out=tmp_path / "results.json")
    assert "success" in success.name and "H.264" in success.name, success
    assert 0 <= success.value <= 1 and 0 <= success.baseline <= 1, success
    assert "action error" in error.name and error.value > 0 and error.baseline > 0, error
    # the same episodes through a lossy codec at >= 35 dB: the versions' errors stay of one size
    assert 0.5 < error.ratio < 2, error
