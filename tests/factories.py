"""Small builders shared by tests: step columns that satisfy the wire schema."""

from __future__ import annotations

import numpy as np


def step_columns(
    n: int,
    state: np.ndarray | int = 3,
    action: np.ndarray | int = 2,
    intervention: bool | np.ndarray = True,
    done_at_end: bool = False,
    success_at_end: bool = False,
    policy_version: int = 0,
    step_ns: int = 1,
) -> dict[str, np.ndarray]:
    """Columns of ``n`` steps: ``state``/``action`` are arrays, or widths for zero-filled ones."""
    state = np.zeros((n, state), np.float32) if isinstance(state, int) else np.asarray(state, np.float32)
    action = np.zeros((n, action), np.float32) if isinstance(action, int) else np.asarray(action, np.float32)
    last = np.arange(n) == n - 1
    return {
        "obs.state": state,
        "action": action,
        "reward": np.zeros(n, np.float32),
        "done": last & done_at_end,
        "success": last & success_at_end,
        "intervention": np.broadcast_to(np.asarray(intervention, bool), (n,)).copy(),
        "policy_version": np.full(n, policy_version, np.int64),
        "t_mono_ns": np.arange(n, dtype=np.int64) * step_ns,
    }


def store_schema(state_dim: int = 3, action_dim: int = 2) -> dict:
    """The store schema of a resource with one state vector and a flat action."""
    from cloud.data.store import ColumnSpec
    from protocol.steps import schema_for

    schema = schema_for([("state", "float32", (state_dim,))], ("float32", (action_dim,)))
    return {name: ColumnSpec(dtype, shape) for name, (dtype, shape) in schema.items()}


def episode_rows(dataset: str, episode_id: str, columns: dict[str, np.ndarray], resource_id: str = "r1"):
    """A whole episode as one StepRows batch from ``resource_id`` (source sim)."""
    from cloud.data.store import StepRows

    return StepRows(
        dataset=dataset,
        episode_id=episode_id,
        resource_id=resource_id,
        source="sim",
        task=dataset,
        first_seq=0,
        columns=columns,
    )


def moving_scene(frames: int, height: int = 64, width: int = 96) -> np.ndarray:
    """A lit floor with a checkerboard and a ball that moves across it: smooth areas, edges and motion."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    floor = 60 + 40 * (((xx // 12) + (yy // 12)) % 2) + 0.5 * yy
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        cx, cy = width * (0.5 + 0.35 * np.cos(t / 6)), height * (0.5 + 0.3 * np.sin(t / 5))
        ball = np.clip(1.5 - np.hypot(xx - cx, yy - cy) / (width / 10), 0, 1)
        out[t, ..., 0] = np.clip(floor + 180 * ball, 0, 255)
        out[t, ..., 1] = np.clip(floor * 0.9 + 60 * ball, 0, 255)
        out[t, ..., 2] = np.clip(floor * 1.1 - 40 * ball, 0, 255)
    return out
