"""Records steps on the control thread without touching disk, and spools them from another thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge.spool import Spool
from protocol.steps import encode_batch


@dataclass
class Step:
    episode_id: str
    seq: int
    task: str
    columns: dict[str, np.ndarray | float | bool | int]


class StepRecorder:
    """The control thread calls ``record`` (a queue put); a writer thread batches steps into the spool."""

    def __init__(
        self, spool: Spool, on_spooled: Callable[[], None], interval_s: float = 0.1, max_batch_steps: int = 256
    ) -> None:
        self.spool = spool
        self.on_spooled = on_spooled
        self.interval_s = interval_s
        self.max_batch_steps = max_batch_steps
        self.recorded = 0
        self.spooled = 0
        self._queue: queue.SimpleQueue[Step] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
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
            if group and (step.episode_id != group[0].episode_id or len(group) >= self.max_batch_steps):
                self._spool(group)
                group = []
            group.append(step)
        if group:
            self._spool(group)
        if steps:
            self.on_spooled()

    def _spool(self, group: list[Step]) -> None:
        names = group[0].columns.keys()
        columns = {name: np.stack([np.asarray(s.columns[name]) for s in group]) for name in names}
        self.spool.append(encode_batch(group[0].episode_id, group[0].seq, columns, task=group[0].task))
        self.spooled += len(group)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
