"""Remote inference: the cloud runs policies too large for an edge and answers observations with action chunks.

Continuous batching, per policy: a request that finds the policy's worker idle goes into a forward pass at once
(``Policy.act_batch``) on that policy's worker thread; requests that arrive while a pass runs wait and go together
into the next pass, up to ``max_batch``. A lone request never waits for company. After a pass that served several
requests, the worker holds the next pass briefly (``REGATHER_SHARE`` of that pass's time, at most ``REGATHER_MAX_S``)
until as many are back: those clients answer their replies within a millisecond or two, and without the pause the
first one back would find the worker idle and take a pass of its own, splitting a steady group of 8 into passes of 1
and 7 (measured: 4 a pass on average; a diffusion policy's pass of 8 costs 1.7 of its pass of 1). One pass at a time
per policy, and
the gateway's event loop never waits on one: replies are handed back to the loop. The newest published version is
loaded (on the worker thread) when it appears; each reply names the version that produced it.

``threads``: torch's intra-op threads for the passes, set on each worker thread. Left unset, torch takes one per
core, which pays for one large pass on an idle machine; on cores shared with other work (the event loop, the
learner, a bench's clients), those threads spin against it and a pass of 8 can cost twice its single-thread time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from cloud.data.version_registry import PolicyRegistry
from policies.base import Policy
from policies.weights import policy_from_bytes
from protocol.incidents import internal_error

log = logging.getLogger("fleetloop.inference")
REGATHER_SHARE = 0.05  # after a pass of several, the next waits at most this share of its time for as many
REGATHER_MAX_S = 0.005  # and never longer than this

Reply = Callable[[np.ndarray | None, int, str, int], None]  # actions, version, error, batch size


@dataclass
class InferenceJob:
    observation: dict[str, np.ndarray]
    reply: Reply


@dataclass
class _Model:
    policy: Policy
    version: int


@dataclass
class InferenceStats:
    forward_passes: int = 0
    requests: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many passes had it


@dataclass
class _Outcome:
    """What one pass produced: chunks and the version, or an error for every request of the batch."""

    batch: list[InferenceJob]
    chunks: np.ndarray | None = None
    version: int = 0
    error: str = ""


class _Lane:
    """One policy's requests and its worker thread; ``running`` while a pass is scheduled or under way."""

    def __init__(self, policy_name: str, threads: int | None) -> None:
        self.waiting: deque[InferenceJob] = deque()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)  # a request joined the queue while the worker runs
        self.running = False
        self.worker = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"infer-{policy_name}",
            initializer=None if threads is None else torch.set_num_threads,
            # torch keeps the count per thread (the caller's OpenMP setting), so it is set on the worker itself
            initargs=() if threads is None else (threads,),
        )


class InferenceServer:
    """Batched inference for every policy the cloud serves; ``submit`` is called on the event loop."""

    def __init__(self, registry: PolicyRegistry, max_batch: int = 16, threads: int | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: must be at least 1, got {max_batch}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads: must be at least 1 (or None: torch's default), got {threads}")
        self.registry = registry
        self.max_batch = max_batch
        self.threads = threads
        self.stats = InferenceStats()  # written on the event loop only, as replies are handed out
        self._lanes: dict[str, _Lane] = {}
        self._models: dict[str, _Model] = {}
        self._closed = False

    def submit(self, policy_name: str, request: InferenceJob) -> None:
        """Queues the request; an idle worker starts a pass with it at once. The reply comes on this event loop."""
        if self._closed:
            request.reply(None, 0, "remote inference is shutting down", 0)
            return
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(policy_name)
        if lane is None:
            lane = self._lanes[policy_name] = _Lane(policy_name, self.threads)
        with lane.lock:
            lane.waiting.append(request)
            if lane.running:  # the running worker takes it into its next pass
                lane.arrived.notify()
                return
            lane.running = True
        lane.worker.submit(self._work, policy_name, lane, loop)

    def waiting(self, policy_name: str) -> int:
        """How many of the policy's requests wait for the next pass (those in the running pass not counted)."""
        lane = self._lanes.get(policy_name)
        return 0 if lane is None else len(lane.waiting)

    async def close(self) -> None:
        """Takes no more passes; a pass under way finishes on its thread, its replies dropped if the loop is gone."""
        self._closed = True
        for lane in self._lanes.values():
            lane.worker.shutdown(wait=False, cancel_futures=True)

    def _work(self, policy_name: str, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        """The worker thread: passes back to back while requests wait, each taking all that wait (up to max_batch);
        after a pass of several, the next waits up to its regather time for as many to be back."""
        company, regather_s = 1, 0.0  # the last pass's size, and how long the next may wait for as many
        while not self._closed:
            with lane.lock:
                if company > 1 and len(lane.waiting) < company:
                    lane.arrived.wait_for(lambda n=company: len(lane.waiting) >= n or self._closed, regather_s)
                if not lane.waiting:
                    lane.running = False
                    return
                batch = [lane.waiting.popleft() for _ in range(min(self.max_batch, len(lane.waiting)))]
            started = time.perf_counter()
            outcome = self._forward(policy_name, batch)
            company = len(batch)
            regather_s = min(REGATHER_SHARE * (time.perf_counter() - started), REGATHER_MAX_S)
            try:
                loop.call_soon_threadsafe(self._deliver, outcome)
            except RuntimeError:  # the event loop is closed: nobody is left to answer
                return

    def _forward(self, policy_name: str, batch: list[InferenceJob]) -> _Outcome:
        """One forward pass of the newest version over the batch; any failure becomes the batch's error reply."""
        try:
            model = self._model(policy_name)
            if model is None:
                return _Outcome(batch, error=f"no version of {policy_name} is published yet")
            chunks = model.policy.act_batch([r.observation for r in batch])
            return _Outcome(batch, np.asarray(chunks, dtype=np.float32), model.version)
        except Exception:  # one bad batch answers with an error; the server keeps serving
            what = f"remote inference of {policy_name} for {len(batch)} request(s)"
            return _Outcome(batch, error=internal_error(log, what))

    def _model(self, policy_name: str) -> _Model | None:
        """The newest published version, loaded here (on the worker thread) the first time it is seen."""
        latest = self.registry.latest(policy_name)
        current = self._models.get(policy_name)
        if latest is None or (current is not None and current.version >= latest.version):
            return current
        # Checked against the learner's signature before anything past the header is parsed.
        policy = policy_from_bytes(self.registry.read_verified(policy_name, latest.version))
        policy.eval()
        self._models[policy_name] = _Model(policy, latest.version)
        log.info("remote inference now serves %s v%d", policy_name, latest.version)
        return self._models[policy_name]

    def _deliver(self, outcome: _Outcome) -> None:
        """On the event loop: counts the pass and answers each request of its batch."""
        size = len(outcome.batch)
        if outcome.chunks is None:
            for request in outcome.batch:
                request.reply(None, 0, outcome.error, size)
            return
        self.stats.forward_passes += 1
        self.stats.requests += size
        self.stats.batch_sizes[size] = self.stats.batch_sizes.get(size, 0) + 1
        for request, chunk in zip(outcome.batch, outcome.chunks, strict=True):
            request.reply(chunk, outcome.version, "", size)
