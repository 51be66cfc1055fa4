"""The learner on several processes, GPUs and nodes: ``torchrun`` + DistributedDataParallel.

Run it with ``torchrun``, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT::

    torchrun --standalone --nproc_per_node=2 -m fleetloop.distributed_learner --root fleetloop-data          # one node
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_endpoint=host:29500 $(which fleetloop-learner) ...

(``fleetloop-learner`` is the same entry point as ``python -m fleetloop.distributed_learner``.) The process group
uses nccl when CUDA is there (each rank on ``cuda:<LOCAL_RANK>``) and gloo on CPUs. Every rank reads the same data
root (a shared file system across nodes): rank 0 alone decides when a round starts, and broadcasts which datasets to
train and how many committed rows each round reads, so every rank trains on the same snapshot of the store even
while the gateway appends. Each rank draws its own batches (its own seed: ``seed + rank``), DDP averages the
gradients, so parameters stay identical on every rank after every step; only rank 0 publishes versions and saves
checkpoints. Without torchrun's variables (or with WORLD_SIZE=1) it is the plain single-process learner.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("fleetloop.learner")


@dataclass
class DistContext:
    """Where this process sits in the learner's process group (rank 0 of 1 when there is none)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module under DDP (its parameters broadcast from rank 0 now, its gradients averaged at backward)."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        module.to(self.device)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (JSON-able plain data: lists, dicts, numbers, strings)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        payload = [json.dumps(obj) if self.is_main else None]
        dist.broadcast_object_list(payload, src=0)
        return json.loads(payload[0])

    def broadcast_module_(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers into ``module`` on every rank (for state DDP does not own, such as
        target networks, which are copies made before any DDP wrapper broadcast its module)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def all_reduce_mean(self, tensor: torch.Tensor | None) -> None:
        if not self.distributed or tensor is None:
            return
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(self.world_size)

    def finish(self) -> None:
        """Waits until every rank is done: none tears its process group down while another still uses it."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def init_from_env(backend: str | None = None) -> DistContext:
    """Joins torchrun's process group (nccl with CUDA, else gloo); a single-process context without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    backend = backend or ("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    log.info("learner rank %d of %d (%s on %s)", rank, world_size, backend, device)
    return DistContext(rank, world_size, local_rank, device, backend)


def parameter_digest(modules: dict[str, nn.Module]) -> str:
    """sha256 over every parameter's bytes, in name order: equal digests mean bit-identical parameters."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        for key, tensor in sorted(modules[name].named_parameters()):
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def trace_writer(path: Path, rank: int) -> Callable[[str, int, dict[str, nn.Module]], None]:
    """An ``on_step`` hook that appends ``{"dataset", "step", "digest"}`` per training step to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def on_step(dataset: str, step: int, modules: dict[str, nn.Module]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"rank": rank, "dataset": dataset, "step": step, "digest": parameter_digest(modules)}))
            f.write("\n")

    return on_step
