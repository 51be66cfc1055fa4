"""Several gateways writing into one episode store at once: each into a partition of its own.

Two writers cannot append to the same zarr arrays (the resize and the partly filled last chunk collide), so a
gateway started with ``--gateway-id NAME`` writes a whole single-writer store of its own (its own lease or lock)
under the shared store's root::

    <store>/                      the root partition: the store of a cloud without --gateway-id, as always
    <store>/@parts/<NAME>/        the partition of gateway NAME ('@' keeps it apart from every dataset name)

Readers (the learner, export, ``policy``) read the union of every partition (``cloud.data.store_union``). A gateway
reads the other partitions' episode records (``Partitions``) so an episode whose edge moved to it from another
gateway continues at the right seq (``cloud.data.shared_partition``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

from cloud.data.blobs import is_object_url, open_blobs
from cloud.data.episodes import EpisodeRecord
from cloud.data.layout import GATEWAY_ID, PARTS
from cloud.data.store import EpisodeStore

ROOT_PARTITION = ""  # the partition at the store's root: a cloud without --gateway-id


def partition_root(base: str | Path, name: str) -> str | Path:
    """Where partition ``name`` lives under the shared store ``base`` (the root partition: ``base`` itself)."""
    if name == ROOT_PARTITION:
        return base
    if isinstance(base, str) and (is_object_url(base) or "://" in base):
        return f"{base.rstrip('/')}/{PARTS}/{name}"
    return Path(base) / PARTS / name


def partition_names(base: str | Path) -> list[str]:
    """Every partition that holds a store now: the root one first (if any), then the others by name."""
    blobs = open_blobs(base)
    names = [ROOT_PARTITION] if blobs.get("zarr.json") is not None else []
    found = [n for n in blobs.children(PARTS) if GATEWAY_ID.fullmatch(n) and blobs.get(f"{PARTS}/{n}/zarr.json")]
    return names + sorted(found)


class Partitions:
    """Read-only views of the partitions of the store at ``base`` (``exclude``: a partition left out, the caller's
    own), opened as they appear. A refresher thread may run beside lookups: lookups take no lock and do no I/O (they
    are made on a gateway's event loop), refreshes hold no lock over their I/O."""

    def __init__(self, base: str | Path, exclude: str | None = None) -> None:
        self.base = base
        self.exclude = exclude
        self.stores: dict[str, EpisodeStore] = {}  # by partition name, in the order they were found
        self.refreshed_at: dict[str, float] = {}  # monotonic time of each partition's last refresh
        self.found_at = 0.0  # monotonic time of the last look for new partitions
        self._records: dict[str, EpisodeRecord] = {}  # episode -> its first record seen (dataset and owner are fixed)
        self._taken: dict[tuple[str, str], int] = {}  # (partition, dataset) -> its records taken into _records
        self._lock = threading.Lock()  # one refresh at a time

    def refresh(self, names: list[str] | None = None) -> None:
        """Finds new partitions and re-reads what each (or those of ``names``) committed since the last look."""
        with self._lock:
            if names is None:
                self.found_at = time.monotonic()
                for name in partition_names(self.base):
                    if name != self.exclude and name not in self.stores:
                        store = EpisodeStore(partition_root(self.base, name), read_only=True)
                        self.stores = {**self.stores, name: store}  # lookups iterate the old dict meanwhile
                names = list(self.stores)
            for name in names:
                store = self.stores[name]
                store.refresh()
                self.refreshed_at[name] = time.monotonic()
                for dataset in store.datasets():
                    taken = self._taken.get((name, dataset), 0)
                    records = store.episodes(dataset)
                    for record in records[taken:]:
                        self._records.setdefault(record.episode_id, record)
                    self._taken[(name, dataset)] = len(records)

    def holders(self, episode_id: str) -> list[str]:
        """The partitions that hold rows of the episode."""
        return [name for name, store in self.stores.items() if store.next_seq(episode_id)]

    def next_seq(self, episode_id: str) -> int:
        """Where the episode continues after every partition's rows of it (0: none holds it)."""
        return max((store.next_seq(episode_id) for store in self.stores.values()), default=0)

    def owner(self, episode_id: str) -> str | None:
        """The resource that recorded the episode (None: no partition holds it)."""
        record = self._records.get(episode_id)
        return None if record is None else record.resource_id

    def episode(self, episode_id: str) -> EpisodeRecord | None:
        """Whose the episode is and where it continues (None: no partition holds it). Its statistics are those of
        the first partition's rows seen: a reader of steps reads ``cloud.data.store_union``."""
        record = self._records.get(episode_id)
        return None if record is None else replace(record, last_seq=self.next_seq(episode_id) - 1)

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
