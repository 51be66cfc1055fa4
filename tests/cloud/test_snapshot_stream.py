"""A full snapshot sent while its registry file is written: pieces leave as the bytes land, the last one (with the
file's sha256) only once the version is recorded durably; a publish that dies completes nothing, and the next one is
sent whole. A real registry on disk, the gateway's pusher, and (last test) the real edge tunnel and runtime."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from cloud.data import blobs, version_registry
from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.version_registry import PolicyRegistry
from cloud.gateway.config import GatewayConfig
from cloud.gateway.push import PolicyPusher
from cloud.gateway.sessions import Session
from policies.factory import make_policy
from policies.weights import policy_to_bytes
from protocol import tunnel_pb2 as pb
from protocol.steps import schema_for
from tests.attacks.weights_harness import RESOURCE, edge_and_gateway

PIECE = 64 << 10


def weights(seed: int, hidden: tuple[int, ...] = (560, 560), state: int = 3) -> bytes:
    """An MLP policy (by default about 1.3 MB: 20 pieces of 64 KB; the harness's gateway cuts 1 MB pieces)."""
    import torch

    torch.manual_seed(seed)
    config = {"observation": {"state": {"shape": [state], "dtype": "float32"}}, "action_dim": 2, "hidden": hidden}
    return policy_to_bytes(make_policy("mlp", config))


class SlowDisk:
    """The registry's writes of a version's file (of its data section, for a signed one) stop ``at`` that fraction of
    it until ``go`` is set; with ``full`` they fail there instead (a full disk), leaving the half-written file behind
    as a writer that died would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: float = 0.5) -> None:
        self.halfway, self.go = threading.Event(), threading.Event()
        self.at = at
        self.full = False
        real = blobs.write_atomically  # the registry's local folder writes through it
        real_body_first = version_registry.body_first  # a signed version's file: its data section from the start

        def write(path, data, *args, **options) -> None:
            if path.suffix == ".safetensors":
                data = self._halves(data)
            real(path, data, *args, **options)

        def body_first(path, head_bytes, body):
            return real_body_first(path, head_bytes, self._halves(body))

        monkeypatch.setattr(blobs, "write_atomically", write)
        monkeypatch.setattr(version_registry, "body_first", body_first)

    def _halves(self, parts) -> Iterator[bytes]:
        whole = b"".join(parts)
        stop = int(len(whole) * self.at)
        yield whole[:stop]
        self.halfway.set()
        assert self.go.wait(20)
        if self.full:
            raise OSError(28, "No space left on device")
        yield whole[stop:]

    def publish_in_background(self, registry: PolicyRegistry, data: bytes) -> threading.Thread:
        def publish() -> None:
            try:
                registry.publish("pick", data)
            except OSError:
                pass  # the full disk: the publish fails, as the learner would see it

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        assert self.halfway.wait(20)
        return thread


def edge_session() -> Session:
    return Session(RESOURCE, "pick", schema_for([("state", "float32", (3,))], ("float32", (2,))))


async def take(edge: Session, quiet_s: float) -> list[pb.PolicyChunk]:
    """The pieces the edge was sent until none came for ``quiet_s``."""
    got = []
    while True:
        try:
            raw = await asyncio.wait_for(edge.out.get(), quiet_s)
        except TimeoutError:
            return got
        edge.bulk_credits.release()
        got.append(pb.CloudMessage.FromString(raw).policy)


@contextlib.asynccontextmanager
async def pushing(registry: PolicyRegistry, **config: float) -> AsyncIterator[Session]:
    """A pusher watching ``registry`` for one edge's session, which took the version published before; stopped at
    the end."""
    edge = edge_session()
    settings = {"registry_poll_s": 0.01, "policy_chunk_bytes": PIECE, **config}
    pusher = PolicyPusher(GatewayConfig(**settings), registry, {"e": edge})
    tasks = [asyncio.create_task(pusher.watch_registry()), asyncio.create_task(pusher.send_policies(edge))]
    await take(edge, 0.5)  # v1
    try:
        yield edge
    finally:
        for task in tasks:
            task.cancel()


def whole(pieces: list[pb.PolicyChunk], version: int) -> tuple[bytes, str]:
    """A version's bytes put together from its pieces, and the sha256 its last piece carries."""
    mine = [p for p in pieces if p.version == version]
    assert [p.offset for p in mine] == sorted({p.offset for p in mine})  # in order, none twice
    return b"".join(p.data for p in mine), mine[-1].sha256


def test_pieces_leave_while_the_file_is_written_and_the_last_waits_for_the_record(tmp_path, monkeypatch) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish("pick", weights(1))
    disk = SlowDisk(monkeypatch)

    async def scenario() -> tuple[list[pb.PolicyChunk], list[pb.PolicyChunk]]:
        async with pushing(registry) as edge:
            writer = await asyncio.to_thread(disk.publish_in_background, registry, weights(2))
            before = await take(edge, 0.5)  # half of v2 is on disk, not recorded
            assert registry.publishing("pick").version == 2 and registry.latest("pick").version == 1
            disk.go.set()
            await asyncio.to_thread(writer.join, 20)
            return before, await take(edge, 0.5)

    before, after = asyncio.run(scenario())
    total = registry.latest("pick").size_bytes
    assert registry.publishing("pick") is None  # published: no longer in flight
    assert len(before) >= 5 and all(p.version == 2 and not p.sha256 for p in before)
    assert all(p.offset + len(p.data) < total for p in before)  # the last piece is not among them
    data, sha256 = whole(before + after, 2)
    assert data == registry.read("pick", 2) and sha256 == registry.latest("pick").sha256


def test_a_publish_that_dies_halfway_completes_nothing_and_the_next_is_sent_whole(tmp_path, monkeypatch) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish("pick", weights(1))
    disk = SlowDisk(monkeypatch)
    disk.full = True

    async def scenario() -> list[pb.PolicyChunk]:
        async with pushing(registry, publish_stalled_s=0.3) as edge:
            await asyncio.to_thread(disk.publish_in_background, registry, weights(2))
            disk.go.set()  # the write fails: the file stays half written, no record
            sent = await take(edge, 1.0)
            monkeypatch.undo()  # the disk has room again
            await asyncio.to_thread(registry.publish, "pick", weights(3))  # v2 anew
            return sent + await take(edge, 1.0)

    sent = asyncio.run(scenario())
    assert registry.latest("pick").version == 2
    died = sent[: next(i for i, p in enumerate(sent[1:], 1) if p.offset == 0)]  # until v2 starts afresh
    assert died and not any(p.sha256 for p in died)  # nothing of the dead publish could complete
    data, sha256 = whole(sent[len(died) :], 2)
    assert data == registry.read("pick", 2) and sha256 == registry.latest("pick").sha256


def test_a_new_learner_process_publishing_the_number_a_dead_one_left_half_written_is_sent_at_once(
    tmp_path, monkeypatch
) -> None:
    """The learner dies halfway through writing v2 and its restart publishes v2 from a new process (another temporary
    file): the gateway, still waiting on the dead file, drops it as soon as the registry holds the new one, well
    within publish_stalled_s."""
    layout = DataLayout(tmp_path)
    registry = signing_registry(layout)
    registry.publish("pick", weights(1))
    disk = SlowDisk(monkeypatch)
    disk.full = True
    fresh = tmp_path / "v2.weights"
    fresh.write_bytes(weights(3))
    restart = (
        "import sys; from pathlib import Path; from cloud.data.layout import DataLayout; "
        "from cloud.data.learner_key import signing_registry; "
        "signing_registry(DataLayout(Path(sys.argv[1]))).publish('pick', Path(sys.argv[2]).read_bytes())"
    )

    async def scenario() -> list[pb.PolicyChunk]:
        async with pushing(registry, publish_stalled_s=60) as edge:
            await asyncio.to_thread(disk.publish_in_background, registry, weights(2))
            disk.go.set()  # the write fails halfway: the dead learner's file stays as it is
            sent = await take(edge, 0.5)
            started = time.monotonic()
            command = [sys.executable, "-c", restart, str(tmp_path), str(fresh)]
            await asyncio.to_thread(subprocess.run, command, check=True)
            sent += await take(edge, 2.0)
            assert time.monotonic() - started < 20
            return sent

    sent = asyncio.run(scenario())
    restarted = max(i for i, p in enumerate(sent) if p.offset == 0)
    data, sha256 = whole(sent[restarted:], 2)
    assert data == registry.read("pick", 2)  # the restarted learner's file, whole
    assert sha256 == registry.latest("pick").sha256 and not any(p.sha256 for p in sent[:restarted])


def test_a_retrained_version_of_the_same_policy_streams_once_too_much_changed_for_a_delta(
    tmp_path, monkeypatch
) -> None:
    """An edge that holds v1 could get a delta; once the tensors hashed so far show that most bytes changed (here the
    first big tensor, 85% of them), the snapshot goes out without waiting for the rest of the file."""
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish("pick", weights(1, hidden=(600, 100), state=600))
    disk = SlowDisk(monkeypatch, at=0.9)

    async def scenario() -> list[pb.PolicyChunk]:
        async with pushing(registry) as edge:
            edge.subscriptions["pick"].applied_version = 1  # as its report says
            retrained = weights(2, hidden=(600, 100), state=600)
            writer = await asyncio.to_thread(disk.publish_in_background, registry, retrained)
            before = await take(edge, 0.5)
            disk.go.set()
            await asyncio.to_thread(writer.join, 20)
            return before

    before = asyncio.run(scenario())
    assert len(before) >= 5 and all(p.version == 2 and p.kind == "full" and not p.sha256 for p in before)


def test_the_edge_holds_half_a_version_and_applies_it_only_once_it_is_recorded(tmp_path, monkeypatch) -> None:
    layout = DataLayout(tmp_path)
    registry = signing_registry(layout)
    registry.publish("pick", weights(1))
    with edge_and_gateway(layout) as (edge, _):
        edge.wait_version(1)
        disk = SlowDisk(monkeypatch)
        writer = disk.publish_in_background(registry, weights(2, hidden=(600, 500)))  # no delta from v1
        deadline = time.monotonic() + 10
        while edge.offers("pick", 2) == 0:  # its first piece arrived
            assert time.monotonic() < deadline, "no piece of v2 reached the edge while it was written"
            time.sleep(0.02)
        time.sleep(0.5)
        assert edge.version() == 1  # half a version: never applied
        disk.go.set()
        writer.join(20)
        edge.wait_version(2)


def test_a_publish_in_the_gateway_s_process_is_sent_without_waiting_for_the_next_look(tmp_path) -> None:
    """The registry tells the pusher when this process leaves a hint or records a version: with a look every 30 s,
    the version still goes out at once, whole."""
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish("pick", weights(1))

    async def scenario() -> list[pb.PolicyChunk]:
        async with pushing(registry, registry_poll_s=30) as edge:
            await asyncio.to_thread(registry.publish, "pick", weights(2))
            return await take(edge, 1.0)

    data, sha256 = whole(asyncio.run(scenario()), 2)
    assert data == registry.read("pick", 2) and sha256 == registry.latest("pick").sha256
