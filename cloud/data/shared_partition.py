"""A gateway's store when several gateways share one: it writes its own partition and knows the others' episodes.

``SharedPartition`` is what the gateway writes through (the ``EpisodeStore`` calls it makes): datasets, schemas and
writes go to its own partition; where an episode continues (``next_seq``) and whose it is (``episode``) come from
its own partition and every other one, so an edge that reconnects to this gateway mid-episode continues at the seq
after the rows another gateway stored, and nothing another gateway stored is written again. A refresher thread
re-reads the other partitions every ``refresh_s``; an episode this gateway does not hold yet but another does is
looked up afresh (at most every ``fresh_s``) before this gateway answers for it.

What stays with the other gateway: rows it acked but had not yet moved from its ingest log into its partition (it
was killed, or is slow). This gateway refuses a batch that starts past what it can see (``first_seq``), the edge
keeps it in its spool and sends it again on its next connection, by when the other gateway has moved them (or, once
restarted, replayed them). If that other gateway moves a batch the edge also resent here (its ack was lost), both
partitions hold those steps and readers see them once (``cloud.data.store_union``).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from cloud.data.columns import ColumnSpec
from cloud.data.episodes import EpisodeRecord
from cloud.data.partitions import Partitions
from cloud.data.store import EpisodeStore, StepRows

log = logging.getLogger("fleetloop")


class SharedPartition:
    """``own``: this gateway's partition (the writer); ``others``: the rest of the store (see the module docstring)."""

    def __init__(self, own: EpisodeStore, others: Partitions, refresh_s: float = 0.5, fresh_s: float = 0.2) -> None:
        self.own = own
        self.others = others
        self.refresh_s = refresh_s
        self.fresh_s = fresh_s
        self._stop = threading.Event()
        others.refresh()
        self._refresher = threading.Thread(target=self._refresh_loop, name="partitions-refresh", daemon=True)
        self._refresher.start()

    @property
    def root(self) -> Path | str:
        return self.own.root

    @property
    def durable(self) -> bool:
        return self.own.durable

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.others.refresh()
            except Exception as err:  # object storage unreachable a while: the next round tries again
                log.warning("store: could not re-read the other gateways' partitions: %s", err)

    def close(self) -> None:
        self._stop.set()
        self._refresher.join(timeout=10)
        self.others.close()
        self.own.close()

    # ---- schema: the own partition's, made like the others' ----

    def datasets(self) -> list[str]:
        theirs = {name for store in list(self.others.stores.values()) for name in store.datasets()}
        return sorted(set(self.own.datasets()) | theirs)

    def episodes(self, dataset: str) -> list[EpisodeRecord]:
        """The episodes of ``dataset`` in every partition, this gateway's first (the others' as last refreshed); an
        episode continued on another gateway appears once per partition that holds a part of it."""
        stores = [self.own, *list(self.others.stores.values())]
        return [e for store in stores if dataset in store.datasets() for e in store.episodes(dataset)]

    def schema(self, dataset: str) -> dict[str, ColumnSpec]:
        if dataset in self.own.datasets():
            return self.own.schema(dataset)
        for store in list(self.others.stores.values()):
            if dataset in store.datasets():
                return store.schema(dataset)
        return self.own.schema(dataset)  # KeyError naming the dataset

    def ensure_dataset(self, name: str, schema: dict[str, ColumnSpec]) -> None:
        """As ``EpisodeStore.ensure_dataset``; a dataset another partition holds is made here with its columns and
        codecs, so every partition keeps it alike."""
        if name not in self.own.datasets() and name in self.datasets():
            stored = self.schema(name)
            self.own.ensure_dataset(name, stored)  # the same checks; nothing is created yet, so it creates
            self.own.ensure_dataset(name, schema)  # ValueError naming the column if the robot's differs
            return
        self.own.ensure_dataset(name, schema)

    def check(self, batch: StepRows, to_encode: object = ()) -> None:
        self.own.check(batch, to_encode)  # type: ignore[arg-type]

    # ---- episodes: every partition's ----

    def next_seq(self, episode_id: str) -> int:
        """Where the episode continues, after its rows in this partition and in every other one."""
        own = self.own.next_seq(episode_id)
        if not own:
            self._fresh(episode_id)
        return max(own, self.others.next_seq(episode_id))

    def owner(self, episode_id: str) -> str | None:
        """The resource that recorded the episode, in whichever partition (no lock taken)."""
        return self.own.owner(episode_id) or self.others.owner(episode_id)

    def episode(self, episode_id: str) -> EpisodeRecord | None:
        own = self.own.episode(episode_id)
        theirs = self.others.episode(episode_id)
        if own is None or theirs is None:
            return own or theirs
        return own if own.last_seq >= theirs.last_seq else theirs

    def _fresh(self, episode_id: str) -> None:
        """Re-reads the partitions that hold an episode this one does not, if that look is older than ``fresh_s``
        (an episode no partition is known to hold is new here, or begun elsewhere since the refresher's last look:
        that costs the event loop nothing)."""
        now = time.monotonic()
        stale = [n for n in self.others.holders(episode_id) if now - self.others.refreshed_at.get(n, 0) > self.fresh_s]
        if stale:
            self.others.refresh(stale)

    def write(self, batches: list[StepRows]) -> dict[str, int]:
        """Writes into this partition; rows another partition holds are skipped, an episode continues after them."""
        continues = {b.episode_id: self.others.next_seq(b.episode_id) for b in batches}
        return self.own.write(batches, {episode: seq for episode, seq in continues.items() if seq})
