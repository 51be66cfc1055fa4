"""What a test checks in the episode store after a run: every step once, in order, with the content the edges made.

The content digest is computed here from the stored rows, in the format ``edge.recorder.StepDigest`` documents
(per episode: sha256 over each step's seq as int64 then every column's raw bytes in name order; overall:
sha256 over "<episode_id>:<steps>:<hex>\\n" lines in episode id order), written out again on purpose so the
check does not lean on the code it checks.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloud.data.store import STORE_COLUMNS, EpisodeStore
from cloud.gateway.ingest import LOG_FOLDER


def wait_compacted(store_root: Path, timeout_s: float = 20.0) -> None:
    """Waits until the gateway's ingest log under ``store_root`` is empty: everything acked is in the store (the
    gateway acks once a batch is in its log, and moves it into the store a moment later)."""
    deadline = time.monotonic() + timeout_s
    while _log_bytes(store_root / LOG_FOLDER) > 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"the ingest log under {store_root} still holds batches after {timeout_s} s")
        time.sleep(0.05)


def _log_bytes(folder: Path) -> int:
    total = 0
    for segment in folder.glob("*.log"):
        try:
            total += segment.stat().st_size
        except FileNotFoundError:  # trimmed meanwhile
            pass
    return total


@dataclass
class ResourceSteps:
    steps: int = 0
    episodes: dict[str, list] = field(default_factory=dict)  # episode id -> [steps, sha256 hex]
    versions_in_time_order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    t_mono_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def digest(self) -> str:
        total = hashlib.sha256()
        for episode in sorted(self.episodes):
            count, hexdigest = self.episodes[episode]
            total.update(f"{episode}:{count}:{hexdigest}\n".encode())
        return total.hexdigest()


def check_store(store: EpisodeStore, dataset: str) -> dict[str, ResourceSteps]:
    """Asserts each episode's seqs are 0..n-1 exactly once, episode ids are unique; returns per-resource figures."""
    store.refresh()
    if dataset not in store.datasets():
        return {}
    rows = store.read(dataset)
    episodes = store.episodes(dataset)
    ids = [e.episode_id for e in episodes]
    assert len(set(ids)) == len(ids), "an episode id appears twice in the episode index"
    content = sorted(name for name in rows if name not in STORE_COLUMNS)
    order = np.lexsort((rows["seq"], rows["episode_index"]))  # by episode, then seq
    index_sorted = rows["episode_index"][order]
    bounds = np.searchsorted(index_sorted, np.arange(len(episodes) + 1))
    out: dict[str, ResourceSteps] = {}
    for index, episode in enumerate(episodes):
        picked = order[bounds[index] : bounds[index + 1]]
        seqs = rows["seq"][picked]
        np.testing.assert_array_equal(
            seqs, np.arange(len(seqs)), err_msg=f"episode {episode.episode_id}: seqs not 0..n-1 exactly once"
        )
        assert len(seqs) == episode.num_steps
        digest = hashlib.sha256()
        for row in picked:
            digest.update(np.int64(rows["seq"][row]).tobytes())
            for name in content:
                digest.update(np.ascontiguousarray(rows[name][row]).tobytes())
        mine = out.setdefault(episode.resource_id, ResourceSteps())
        mine.steps += len(seqs)
        mine.episodes[episode.episode_id] = [len(seqs), digest.hexdigest()]
    owner = np.array([e.resource_id for e in episodes], dtype=object)
    for resource_id, mine in out.items():
        rows_of = np.flatnonzero(owner[rows["episode_index"]] == resource_id)
        in_time = rows_of[np.argsort(rows["t_mono_ns"][rows_of], kind="stable")]
        mine.versions_in_time_order = rows["policy_version"][in_time]
        mine.t_mono_ns = rows["t_mono_ns"][in_time]
    return out


def assert_versions_never_go_back(resource_id: str, versions: np.ndarray) -> None:
    if len(versions) > 1:
        back = np.flatnonzero(np.diff(versions) < 0)
        assert back.size == 0, (
            f"{resource_id} went back from policy v{versions[back[0]]} to v{versions[back[0] + 1]} "
            f"(step {back[0] + 1} in time order)"
        )
