"""Bench (j) on a few gym-pusht frames: the rows exist for every codec and H.264 meets the issue's targets."""

from __future__ import annotations

from bench.video import measure_scene, pusht_frames
from protocol.video import CODECS


def test_video_rows_for_pusht_frames() -> None:
    ((scene, episodes),) = pusht_frames(30).items()
    assert episodes[0].shape == (30, 96, 96, 3) and episodes[0].std() > 0  # rendered frames, not a blank screen
    rows = {r.name: r for r in measure_scene(scene, episodes, say=lambda _: None)}
    assert len(rows) == 4 * len(CODECS)
    assert all(r.value > 0 and r.baseline > 0 for r in rows.values())
    assert rows[f"(j) {scene} h264 wire bytes/frame"].ratio <= 0.05
    assert rows[f"(j) {scene} h264 PSNR"].value >= 35
