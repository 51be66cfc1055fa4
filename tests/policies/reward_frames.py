"""Frames a tiny reward classifier can learn: camera images whose success frames hold a bright square somewhere on
a dark, noisy background (failure frames are the background alone), and that classifier's config: a 2-stage
ResNet on 32x32 frames, random weights, nothing downloaded; and classifiers of that config that always (or never)
say success."""

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


def tiny_config(cameras: tuple[str, ...] = ("front",), side: int = SIZE) -> dict[str, Any]:
    """``side``: the cameras' pixels per side (other than SIZE, frames are resized to SIZE inside the model)."""
    observation = {name: {"shape": [side, side, 3], "dtype": "uint8"} for name in cameras}
    return {"observation": observation, "encoder": TINY_ENCODER, **TINY_HEAD}


def constant_classifier(success: bool, cameras: tuple[str, ...] = ("front",), side: int = SIZE, seed: int = 0) -> Any:
    """A tiny reward classifier of random weights that says ``success`` whatever it sees: its last layer's weights are
    zero and its bias is +-10 (P about 1 or 0)."""
    import torch

    from policies.factory import make_policy

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = make_policy("reward_classifier", tiny_config(cameras, side))
    last = classifier.model.classifier_head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(10.0 if success else -10.0)
    return classifier.eval()


def held_out(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """``n`` success then ``n`` failure frames never seen in training, and their labels (1, 0)."""
    rng = np.random.default_rng(seed)
    images = np.concatenate([frames(rng, n, True), frames(rng, n, False)])
    return images, np.r_[np.ones(n), np.zeros(n)]
