"""Bench (l) reduced: lerobot's own actor -> learner transport moves image steps, measured against raw gRPC."""

from __future__ import annotations

from bench.run import run_bench


def test_quick_lerobot_uplink_rows_against_raw_grpc(tmp_path) -> None:
    results = run_bench(figures=("lerobot-uplink",), quick=True, out=tmp_path / "results.json")
    rows = {r.unit: r for r in results}
    assert set(rows) == {"steps/s", "MB/s"}, [r.name for r in results]
    for row in rows.values():
        assert row.value > 0 and row.baseline > 0, row
        assert "lerobot" in row.name and "pickle" in row.note, row
    # lerobot serialises every transition with torch.save and sends the image twice: never past raw bytes
    assert rows["steps/s"].ratio < 1, rows["steps/s"]
