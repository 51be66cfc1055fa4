"""Frames a tiny reward classifier can learn: camera images whose success frames hold a bright square somewhere on
a dark, noisy background (failure frames are the background alone), and that classifier's config: a 2-stage
ResNet on 32x32 frames, random weights, nothing downloaded."""

from __future__ import annotations

from typing import Any

import numpy as np

SIZE = 32  # pixels per side: the 2-stage encoder's input, so no resize
SQUARE = 16  # half the frame: the frozen random encoder leaves only the head to learn
TINY_ENCODER = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}
TINY_HEAD = {"hidden_dim": 32, "latent_dim": 32}


def frames(rng: np.random.Generator, n: int, success: bool) -> np.ndarray:
    """``n`` uint8 (SIZE, SIZE, 3) frames; with ``success``, each holds a bright square at a random place."""
    images = rng.integers(0, 110, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    if success:
        for image in images:
            row, col = rng.integers(0, SIZE - SQUARE, 2)
            image[row : row + SQUARE, col : col + SQUARE] = rng.integers(220, 256, 3, dtype=np.uint8)
    return images


def tiny_config(cameras: tuple[str, ...] = ("front",)) -> dict[str, Any]:
    observation = {name: {"shape": [SIZE, SIZE, 3], "dtype": "uint8"} for name in cameras}
    return {"observation": observation, "encoder": TINY_ENCODER, **TINY_HEAD}


def held_out(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """``n`` success then ``n`` failure frames never seen in training, and their labels (1, 0)."""
    rng = np.random.default_rng(seed)
    images = np.concatenate([frames(rng, n, True), frames(rng, n, False)])
    return images, np.r_[np.ones(n), np.zeros(n)]
