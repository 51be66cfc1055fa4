"""A plain behaviour-cloning training loop, used by the learner and by offline checks."""

from __future__ import annotations

import numpy as np
import torch

from policies.base import Policy


def train_policy(
    policy: Policy,
    dataset: dict[str, np.ndarray],
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    weights: np.ndarray | None = None,
    seed: int = 0,
    fit_normalization: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
) -> float:
    """Trains ``policy`` in place on ``dataset`` ("obs.<name>", "action" arrays with equal first dimension).

    Batches are drawn with replacement, in proportion to ``weights`` when given (e.g. staleness or
    intervention weights). ``fit_normalization`` sets the normalization from the whole dataset first: do it
    for a fresh policy, not when fine-tuning one whose normalization must stay fixed.
    ``optimizer``: one the caller keeps (e.g. to checkpoint its state); by default a fresh AdamW.
    Returns the mean loss over the last few steps.
    """
    n = len(dataset["action"])
    if n == 0 or steps <= 0:
        raise ValueError("train_policy needs a non-empty dataset and steps > 0")
    if fit_normalization:
        policy.fit_normalization(dataset)
    # Tensors once up front; uint8 images stay uint8 (the policy scales them), which keeps memory low.
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in dataset.items()}
    generator = torch.Generator().manual_seed(seed)
    if weights is not None:
        probabilities = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if probabilities.shape != (n,) or not torch.all(probabilities >= 0) or probabilities.sum() <= 0:
            raise ValueError("weights must be non-negative, one per sample, and not all zero")
    optimizer = optimizer if optimizer is not None else torch.optim.AdamW(policy.parameters(), lr=lr)
    was_training = policy.training
    policy.train()
    recent: list[float] = []
    for _ in range(steps):
        if weights is None:
            index = torch.randint(n, (batch_size,), generator=generator)
        else:
            index = torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)
        loss = policy.loss({k: v[index] for k, v in tensors.items()}).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent = [*recent[-19:], loss.item()]
    policy.train(was_training)
    return float(np.mean(recent))
