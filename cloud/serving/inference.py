"""Remote inference: the cloud runs policies too large for an edge and answers observations with action chunks.

Requests from every robot that runs the same policy are gathered for a few milliseconds and go through
one forward pass (``Policy.act_batch``), on a worker thread so the gateway's event loop never waits on it.
The newest published version is loaded when it appears; each reply names the version that produced it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cloud.data.version_registry import PolicyRegistry
from policies.base import Policy
from policies.weights import policy_from_bytes
from protocol.incidents import internal_error

log = logging.getLogger("fleetloop.inference")


@dataclass
class InferenceJob:
    observation: dict[str, np.ndarray]
    reply: Callable[[np.ndarray | None, int, str, int], None]  # actions, version, error, batch size


@dataclass
class _Model:
    policy: Policy
    version: int


@dataclass
class InferenceStats:
    forward_passes: int = 0
    requests: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many passes had it


class InferenceServer:
    def __init__(self, registry: PolicyRegistry, max_batch: int = 16, gather_s: float = 0.005) -> None:
        self.registry = registry
        self.max_batch = max_batch
        self.gather_s = gather_s  # how long the first request of a batch waits for others
        self.stats = InferenceStats()
        self._queues: dict[str, asyncio.Queue[InferenceJob]] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._models: dict[str, _Model] = {}

    def submit(self, policy_name: str, request: InferenceJob) -> None:
        queue = self._queues.get(policy_name)
        if queue is None:
            queue = self._queues[policy_name] = asyncio.Queue()
            self._workers[policy_name] = asyncio.create_task(
                self._serve(policy_name, queue), name=f"infer-{policy_name}"
            )
        queue.put_nowait(request)

    async def close(self) -> None:
        for task in self._workers.values():
            task.cancel()

    async def _model(self, policy_name: str) -> _Model | None:
        latest = await asyncio.to_thread(self.registry.latest, policy_name)
        current = self._models.get(policy_name)
        if latest is None or (current is not None and current.version >= latest.version):
            return current
        # Checked against the learner's signature before anything past the header is parsed.
        weights = await asyncio.to_thread(self.registry.read_verified, policy_name, latest.version)
        policy = await asyncio.to_thread(policy_from_bytes, weights)
        policy.eval()
        self._models[policy_name] = _Model(policy, latest.version)
        log.info("remote inference now serves %s v%d", policy_name, latest.version)
        return self._models[policy_name]

    @staticmethod
    def _refuse(batch: list[InferenceJob], error: str) -> None:
        for request in batch:
            request.reply(None, 0, error, len(batch))

    async def _serve(self, policy_name: str, queue: asyncio.Queue[InferenceJob]) -> None:
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + self.gather_s
            while len(batch) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout=left))
                except TimeoutError:
                    break
            try:
                model = await self._model(policy_name)
                if model is None:
                    raise LookupError(f"no version of {policy_name} is published yet")
                chunks = await asyncio.to_thread(model.policy.act_batch, [r.observation for r in batch])
            except LookupError as exc:  # nothing published yet: the robots may hear that
                self._refuse(batch, str(exc))
                continue
            except Exception:  # one bad batch answers with an error; the server keeps serving
                what = f"remote inference of {policy_name} for {len(batch)} request(s)"
                self._refuse(batch, internal_error(log, what))
                continue
            self.stats.forward_passes += 1
            self.stats.requests += len(batch)
            self.stats.batch_sizes[len(batch)] = self.stats.batch_sizes.get(len(batch), 0) + 1
            for request, chunk in zip(batch, chunks, strict=True):
                request.reply(np.asarray(chunk, dtype=np.float32), model.version, "", len(batch))
