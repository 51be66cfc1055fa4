"""A plain behaviour-cloning training loop, used by the learner and by offline checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from policies.base import Policy

# Draws one batch: (batch_size, generator) -> indices into the dataset.
IndexSampler = Callable[[int, torch.Generator], torch.Tensor]


class StreamedColumns(Protocol):
    """Columns of the dataset not held in memory (cameras: ``cloud.learning.streaming.Streamed``): each batch's
    values are fetched for the positions drawn for it."""

    def batches(self, indices: Sequence[torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        """The values of each batch of positions, in order."""
        ...

    def sample(self) -> dict[str, np.ndarray]:
        """Values of evenly spaced positions (fewer than the dataset's): for normalization statistics."""
        ...


class PolicyLoss(nn.Module):
    """``forward(batch)`` = the policy's mean loss: what DistributedDataParallel wraps (it syncs gradients of
    whatever its module's forward computes, and ``Policy.loss`` is not ``forward``)."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.policy.loss(batch).mean()


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
    index_sampler: IndexSampler | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    on_step: Callable[[int], None] | None = None,
    device: torch.device | str = "cpu",
    streamed: StreamedColumns | None = None,
) -> float:
    """Trains ``policy`` in place on ``dataset`` (arrays with equal first dimension: "obs.<name>" and the targets
    its ``loss`` takes, e.g. "action").

    Batches are drawn with replacement: by ``index_sampler`` when given (``cloud.learning.sampler.Sampler.draw``:
    explicit ratios between kinds of data, staleness weights), else in proportion to ``weights`` when given, else
    uniformly.
    ``fit_normalization`` sets the normalization from the whole dataset first: do it for a fresh policy, not when
    fine-tuning one whose normalization must stay fixed.
    ``optimizer``: one the caller keeps (e.g. to checkpoint its state); by default a fresh AdamW.
    ``wrap``: wraps the loss module, e.g. in DistributedDataParallel (``cloud.learning.distributed``), so gradients are
    averaged over ranks; ``on_step(step)`` runs after every optimizer step (1-based). ``device``: where the data and
    the (already moved) policy live; batches are drawn on the CPU generator and moved there. ``streamed``: columns
    not in ``dataset`` (cameras the learner does not hold), fetched per batch; ``dataset`` then holds the rest.
    Returns the mean loss over the last few steps.
    """
    n = len(next(iter(dataset.values()))) if dataset else 0
    if n == 0 or steps <= 0:
        raise ValueError("train_policy needs a non-empty dataset and steps > 0")
    if fit_normalization:
        policy.fit_normalization(dataset if streamed is None else {**dataset, **streamed.sample()})
        policy.to(device)  # the fitted buffers are CPU tensors
    # Tensors once up front; uint8 images stay uint8 (the policy scales them), which keeps memory low.
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in dataset.items()}
    draw = _drawer(n, weights, index_sampler)
    generator = torch.Generator().manual_seed(seed)
    indices: list[torch.Tensor] = []
    fetched: Iterator[dict[str, torch.Tensor]] | None = None
    if streamed is not None:  # every batch drawn first (the same draws as otherwise), so fetching can run ahead
        indices = [draw(batch_size, generator) for _ in range(steps)]
        fetched = streamed.batches(indices)
    optimizer = optimizer if optimizer is not None else torch.optim.AdamW(policy.parameters(), lr=lr)
    model: nn.Module = PolicyLoss(policy)
    if wrap is not None:
        model = wrap(model)
    was_training = policy.training
    policy.train()
    recent: list[float] = []
    for step in range(1, steps + 1):
        index = (indices[step - 1] if fetched is not None else draw(batch_size, generator)).to(device)
        batch = {k: v[index] for k, v in tensors.items()}
        if fetched is not None:
            batch.update({k: v.to(device) for k, v in next(fetched).items()})
        loss = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent = [*recent[-19:], loss.item()]
        if on_step is not None:
            on_step(step)
    policy.train(was_training)
    return float(np.mean(recent))


def _drawer(n: int, weights: np.ndarray | None, index_sampler: IndexSampler | None) -> IndexSampler:
    """How batches are drawn: by ``index_sampler``, else in proportion to ``weights``, else uniformly."""
    if index_sampler is not None:
        return index_sampler
    if weights is None:
        return lambda size, generator: torch.randint(n, (size,), generator=generator)
    probabilities = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if probabilities.shape != (n,) or not torch.all(probabilities >= 0) or probabilities.sum() <= 0:
        raise ValueError("weights must be non-negative, one per sample, and not all zero")
    return lambda size, generator: torch.multinomial(probabilities, size, replacement=True, generator=generator)
