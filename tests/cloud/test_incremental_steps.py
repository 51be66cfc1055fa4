"""The learner's step index reads only new rows each round and sees later labels; large columns stream per batch
through a cache that never holds more than its bytes, and give the store's own frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
from cloud.learning.config import LearnerConfig
from cloud.learning.sampler import load_steps
from cloud.learning.step_index import StepIndex
from cloud.learning.streaming import FrameCache, FrameStream, Streamed
from hal.config import ConfigError
from policies.cnn import CNNConfig, CNNPolicy
from policies.train import train_policy
from protocol.video import CameraEncoder, PacketColumn
from tests.factories import step_columns, store_schema
from tests.protocol.test_video import moving_scene

SMALL = ["obs.state", "action"]


class CountingStore:
    """A real store whose reads are counted: (start, stop, columns) of each."""

    def __init__(self, store: EpisodeStore) -> None:
        self.store, self.reads = store, []

    def read(self, dataset, columns=None, start=0, stop=None):
        data = self.store.read(dataset, columns, start, stop)
        self.reads.append((start, start + len(next(iter(data.values()))), sorted(data)))
        return data

    def __getattr__(self, name):
        return getattr(self.store, name)


def rows(episode_id, n, first_seq=0, label="", source="sim", **kw) -> StepRows:
    columns = step_columns(n, state=np.full((n, 3), first_seq, np.float32) + np.arange(n)[:, None], **kw)
    return StepRows("toy", episode_id, "arm-1", source, "pick", first_seq, columns, label=label, labelled_by="ana")


def assert_same_table(got, want) -> None:
    for name in ("kind", "next_row", "terminal", "discarded"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert sorted(got.columns) == sorted(want.columns)
    for name in want.columns:
        np.testing.assert_array_equal(got.columns[name], want.columns[name], err_msg=name)


def test_each_round_reads_only_the_rows_committed_since_the_last(tmp_path) -> None:
    with EpisodeStore(tmp_path / "store") as real:
        real.ensure_dataset("toy", store_schema())
        store = CountingStore(real)
        index = StepIndex(store)
        real.write([rows("a", 3, intervention=True), rows("b", 2, intervention=False, policy_version=1)])
        assert_same_table(index.table("toy", SMALL), load_steps(real, "toy", SMALL))
        store.reads.clear()
        # a continues (its row 2 gets a successor only now), b ends, c starts
        real.write([rows("a", 2, first_seq=3, done_at_end=True, success_at_end=True), rows("c", 4)])
        real.write([rows("b", 1, first_seq=2, done_at_end=True)])
        table = index.table("toy", SMALL)
        assert {(start, stop) for start, stop, _ in store.reads} == {(5, 12)}  # the 7 new rows, nothing older
        assert_same_table(table, load_steps(real, "toy", SMALL))
        assert table.next_row[2] == 5  # a's old tail links to its new step
        store.reads.clear()
        assert_same_table(index.table("toy", SMALL), table)
        assert store.reads == []  # nothing new: nothing read
        index.table("toy", [*SMALL, "reward"])  # a column asked for late: read once for every held row
        assert [(start, stop) for start, stop, _ in store.reads] == [(0, 12)]
        assert_same_table(index.table("toy", SMALL, rows=6), load_steps(real, "toy", SMALL, rows=6))


def test_a_discard_and_offline_sources_after_the_rows_were_read_are_seen(tmp_path) -> None:
    with EpisodeStore(tmp_path / "store") as store:
        store.ensure_dataset("toy", store_schema())
        store.write([rows("a", 3), rows("p", 2, source="phone"), rows("b", 2)])
        index = StepIndex(store)
        assert not index.table("toy", SMALL).discarded.any()
        store.write([rows("a", 1, first_seq=3, label="discarded", done_at_end=True)])  # a person discards a later
        table = index.table("toy", SMALL, offline_sources=("phone",))
        assert table.discarded.tolist() == [True] * 3 + [False] * 4 + [True]
        assert_same_table(table, load_steps(store, "toy", SMALL, offline_sources=("phone",)))


def image_store(path, n=96, shape=(16, 16, 3)) -> EpisodeStore:
    store = EpisodeStore(path, chunk_rows=16)
    schema = store_schema()
    schema["obs.cam"] = ColumnSpec("|u1", shape)
    store.ensure_dataset("toy", schema)
    for e in range(n // 12):
        columns = step_columns(12, done_at_end=True)
        columns["obs.cam"] = np.random.default_rng(e).integers(0, 256, (12, *shape), np.uint8)
        store.write([StepRows("toy", f"e{e}", "arm-1", "sim", "pick", 0, columns)])
    return store


def test_the_frame_cache_never_holds_more_than_its_bytes(tmp_path) -> None:
    with image_store(tmp_path / "store") as store:
        frames = store.read("toy", ["obs.cam"])["obs.cam"]
        block = 16 * 16 * 16 * 3  # one 16-row chunk of 16x16 frames
        cache = FrameCache(store, max_bytes=2 * block + 100)
        rng = np.random.default_rng(0)
        for _ in range(40):
            start = int(rng.integers(0, len(frames) - 20))
            picked = rng.integers(start, start + 20, 6)  # near one another, as batches of recent rows are
            np.testing.assert_array_equal(cache.rows("toy", "obs.cam", picked), frames[picked])
            assert cache.bytes <= cache.max_bytes
        assert cache.peak_bytes <= cache.max_bytes and cache.misses > 6 and cache.hits > 0
        tiny = FrameCache(store, max_bytes=block - 1)  # no block fits: each read is used once, none kept
        np.testing.assert_array_equal(tiny.rows("toy", "obs.cam", np.array([3, 40])), frames[[3, 40]])
        assert tiny.bytes == 0


def test_a_large_column_is_streamed_and_trains_to_the_same_policy_as_held_frames(tmp_path) -> None:
    with image_store(tmp_path / "store") as store:
        table = StepIndex(store, large_row_bytes=512).table("toy", ["obs.cam", *SMALL])
        assert list(table.streamed) == ["obs.cam"] and "obs.cam" not in table.columns
        full = load_steps(store, "toy", ["obs.cam", *SMALL])
        picked = np.arange(5, 90, 2)
        losses, weights = [], []
        for streamed in (None, Streamed(FrameStream(store, 1 << 20), "toy", {"obs.cam": ("obs.cam", picked)})):
            data = {name: full.columns[name][picked] for name in SMALL}
            if streamed is None:
                data["obs.cam"] = full.columns["obs.cam"][picked]
            torch.manual_seed(0)
            observation = {"state": {"shape": [3], "dtype": "float32"}, "cam": {"shape": [16, 16, 3], "dtype": "uint8"}}
            policy = CNNPolicy(CNNConfig(observation=observation, action_dim=2, channels=(4,), hidden=(16,)))
            losses.append(train_policy(policy, data, steps=5, batch_size=8, streamed=streamed))
            weights.append(torch.cat([p.flatten() for p in policy.parameters()]))
        assert losses[0] == losses[1]
        torch.testing.assert_close(weights[0], weights[1])


def encoded_store(path) -> EpisodeStore:
    height, width = 48, 64
    store = EpisodeStore(path)
    schema = store_schema()
    schema["obs.front"] = ColumnSpec("|u1", (height, width, 3), "h264")
    store.ensure_dataset("toy", schema)
    encoders = [CameraEncoder("h264", width, height, 30, gop=8, camera="obs.front") for _ in range(2)]
    scenes = [moving_scene(40 + 9 * e, height, width)[9 * e :] for e in range(2)]
    for first in range(0, 40, 10):  # two episodes interleaved, 10 steps at a time
        for e, encoder in enumerate(encoders):
            packets = [p for frame in scenes[e][first : first + 10] for p in encoder.encode(frame)]
            columns = step_columns(10, done_at_end=first == 30)
            columns["obs.front"] = PacketColumn(
                "h264", tuple(p.data for p in packets), np.array([p.keyframe for p in packets])
            )
            store.write([StepRows("toy", f"e{e}", "arm-1", "sim", "pick", first, columns)])
    return store


@pytest.mark.parametrize("workers", [0, 1])
def test_decoded_batches_are_the_stores_frames(tmp_path, workers) -> None:
    """Encoded camera rows fetched per batch (in the learner's thread, or in a DataLoader worker with its own
    read-only store) are exactly the frames ``store.read`` decodes."""
    with encoded_store(tmp_path / "store") as store:
        table = StepIndex(store).table("toy", ["obs.front", *SMALL])
        assert "obs.front" in table.streamed  # encoded: never held, whatever its size
        frames = store.read("toy", ["obs.front"])["obs.front"]
        rows = np.arange(len(frames))[::-1].copy()
        streamed = Streamed(FrameStream(store, 4 << 20, workers), "toy", {"obs.front": ("obs.front", rows)})
        indices = [torch.tensor([0, 5, 79]), torch.tensor([40, 41, 3, 3])]
        batches = list(streamed.batches(indices))
        for index, batch in zip(indices, batches, strict=True):
            np.testing.assert_array_equal(batch["obs.front"].numpy(), frames[rows[index.numpy()]])


def test_the_cache_and_workers_are_checked_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"learner\.cache_bytes"):
        LearnerConfig(cache_bytes=1000)
    with pytest.raises(ConfigError, match=r"learner\.loader_workers"):
        LearnerConfig(loader_workers=-1)
