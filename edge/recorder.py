"""Records steps on the control thread without touching disk, and spools them from another thread.

The spool may be bounded (``max_spool_bytes``): once the unacked steps on disk reach the bound, ``full``
turns true and the agent holds the robot still instead of recording more; it never deletes unacked steps.
``full`` turns false again once acks bring the spool below ``RESUME_FRACTION`` of the bound.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge.camera_uplink import CameraUplink
from edge.spool import SpoolStore
from protocol import tunnel_pb2 as pb
from protocol.steps import encode_batch

log = logging.getLogger("fleetloop.edge")

RESUME_FRACTION = 0.9  # hysteresis: a robot that held for a full spool moves again below 90% of the bound


@dataclass
class Step:
    episode_id: str
    seq: int
    task: str
    columns: dict[str, np.ndarray | float | bool | int]
    who: str = ""  # the person who drove this step ("" : the policy, or no person)
    label: pb.EpisodeLabel | None = None  # a person's verdict, on an episode's last step only


class StepDigest:
    """A running sha256 of the steps an edge produced, independent of how they were batched.

    Per episode: sha256 over its steps in seq order, each step as its seq (int64 little-endian) followed by
    the raw bytes of every column in name order. Overall: sha256 over ``"<episode_id>:<steps>:<hex>\\n"``
    lines in episode id order. The store's rows give the same figure when it holds exactly these steps.
    """

    def __init__(self) -> None:
        self.episodes: dict[str, tuple[int, hashlib._Hash]] = {}

    def update(self, step: Step) -> None:
        count, digest = self.episodes.get(step.episode_id) or (0, hashlib.sha256())
        digest.update(np.int64(step.seq).tobytes())
        for name in sorted(step.columns):
            digest.update(np.ascontiguousarray(step.columns[name]).tobytes())
        self.episodes[step.episode_id] = (count + 1, digest)

    def per_episode(self) -> dict[str, list]:
        return {episode: [count, digest.hexdigest()] for episode, (count, digest) in sorted(self.episodes.items())}

    def hexdigest(self) -> str:
        return combine_episode_digests(self.per_episode())


def combine_episode_digests(episodes: dict[str, list]) -> str:
    total = hashlib.sha256()
    for episode in sorted(episodes):
        count, hexdigest = episodes[episode]
        total.update(f"{episode}:{count}:{hexdigest}\n".encode())
    return total.hexdigest()


class StepRecorder:
    """The control thread calls ``record`` (a queue put); a writer thread batches steps into the spool."""

    def __init__(
        self,
        spool: SpoolStore,
        on_spooled: Callable[[], None],
        interval_s: float = 0.1,
        max_batch_steps: int = 256,
        max_spool_bytes: int = 0,
        digest: bool = False,
        cameras: CameraUplink | None = None,
    ) -> None:
        """``cameras``: encodes the camera columns of each batch before it is spooled (None: every column raw)."""
        self.spool = spool
        self.cameras = cameras
        self.on_spooled = on_spooled
        self.interval_s = interval_s
        self.max_batch_steps = max_batch_steps
        self.max_spool_bytes = max_spool_bytes  # 0: unbounded
        self.digest = StepDigest() if digest else None
        self.recorded = 0
        self.spooled = 0
        self.full = False  # read by the control thread: the spool reached its bound, record nothing more
        self._queue: queue.SimpleQueue[Step] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._check_bound()
        self._thread.start()

    def record(self, step: Step) -> None:
        self.recorded += 1
        self._queue.put(step)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()
        self.flush()

    def flush(self) -> None:
        steps: list[Step] = []
        while not self._queue.empty():
            steps.append(self._queue.get())
        group: list[Step] = []
        for step in steps:
            if group and not _joins(group, step, self.max_batch_steps):
                self._spool(group)
                group = []
            group.append(step)
        if group:
            self._spool(group)
        if steps:
            self.on_spooled()
        self._check_bound()

    def _check_bound(self) -> None:
        """Runs on the writer thread (and every ``interval_s``, so acks that free room are noticed)."""
        if not self.max_spool_bytes:
            return
        size = self.spool.size_bytes
        if not self.full and size >= self.max_spool_bytes:
            self.full = True
        elif self.full and size < RESUME_FRACTION * self.max_spool_bytes:
            self.full = False

    def _spool(self, group: list[Step]) -> None:
        names = group[0].columns.keys()
        columns = {name: np.stack([np.asarray(s.columns[name]) for s in group]) for name in names}
        video = self.cameras.take(group[0].episode_id, columns) if self.cameras is not None else None
        batch = encode_batch(
            group[0].episode_id, group[0].seq, columns, task=group[0].task, label=group[-1].label, video=video
        )
        if any(step.who for step in group):
            batch.operators.extend(step.who for step in group)
        self.spool.append(batch)
        self.spooled += len(group)
        if self.digest is not None:
            for step in group:
                self.digest.update(step)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _joins(group: list[Step], step: Step, max_steps: int) -> bool:
    """Whether ``step`` goes into the batch ``group`` begins: one episode, a person's label only on its last step."""
    return step.episode_id == group[0].episode_id and len(group) < max_steps and group[-1].label is None
