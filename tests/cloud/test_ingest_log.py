"""The gateway's ingest log: records survive a reopen as written, trimmed segments go, a write cut short is dropped,
a record that fails its checksum is refused; and a real gateway SIGKILLed after acking, before its compactor moved
the batches into the store, puts them there when it starts again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from cloud.data.ingest_log import (
    FIRST_FRAME,
    FIRST_MAGIC,
    FRAME,
    WIRE_FRAME,
    IngestLog,
    IngestLogError,
    Wire,
    batch_rows,
    encode,
    encode_wire,
)
from cloud.data.store import EpisodeStore, StepRows
from cloud.data.version_registry import PolicyRegistry
from cloud.gateway.config import GatewayConfig
from cloud.gateway.server import Gateway
from protocol import PROTOCOL_VERSION
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from protocol.steps import decode_batch, encode_batch
from protocol.video import PacketColumn
from tests.cloud.test_gateway_video_ingest import FRAMES, RESOURCE, batches
from tests.factories import step_columns

ROOT = Path(__file__).resolve().parents[2]


def rows(episode: str = "ep", first: int = 0, n: int = 5, label: str = "") -> StepRows:
    columns: dict = dict(step_columns(n, state=3, action=2))
    columns["obs.cam"] = np.arange(n * 4 * 6 * 3, dtype=np.uint8).reshape(n, 4, 6, 3)
    keyframe = np.zeros(n, np.bool_)
    keyframe[0] = True
    columns["obs.video"] = PacketColumn("h264", tuple(bytes([i]) * (i + 1) for i in range(n)), keyframe)
    operators = tuple("ana" if i % 2 else "" for i in range(n))
    return StepRows("d", episode, "r1", "sim", "pick", first, columns, operators, label, "ana" if label else "")


def same(a: StepRows, b: StepRows) -> bool:
    fields = ("dataset", "episode_id", "resource_id", "source", "task", "first_seq", "operators", "label")
    if any(getattr(a, f) != getattr(b, f) for f in fields) or a.columns.keys() != b.columns.keys():
        return False
    for name, value in a.columns.items():
        other = b.columns[name]
        if isinstance(value, PacketColumn):
            if value.packets != other.packets or not np.array_equal(value.keyframe, other.keyframe):
                return False
        elif value.dtype != other.dtype or not np.array_equal(value, other):
            return False
    return True


def test_appended_records_replay_as_written_after_a_reopen(tmp_path: Path) -> None:
    log = IngestLog(tmp_path)
    written = [rows("a"), rows("b", 3, 2, label="success"), rows("a", 5, 1)]
    assert log.append(written[:2]) == 1 and log.append(written[2:]) == 2
    log.close()
    again = IngestLog(tmp_path)
    replayed = list(again.replay())
    assert [n for n, _ in replayed] == [0, 1, 2]
    assert all(same(a, b) for a, (_, b) in zip(written, replayed, strict=True))
    assert again.append([rows("c")]) == 3  # numbering goes on


def wire_rows(episode: str, first: int = 0, n: int = 4) -> tuple[StepRows, Wire]:
    """A batch as the gateway has it: the EdgeMessage as it came, and the rows decoded from it."""
    columns = dict(step_columns(n, state=np.arange(n * 3, dtype=np.float32).reshape(n, 3), action=2))
    columns["obs.cam"] = np.arange(n * 4 * 6 * 3, dtype=np.uint8).reshape(n, 4, 6, 3)
    schema = {name: (values.dtype.str, values.shape[1:]) for name, values in columns.items()}
    message = pb.EdgeMessage(steps=encode_batch(episode, first, columns, task="pick")).SerializeToString()
    batch = pb.EdgeMessage.FromString(message).steps
    return batch_rows(batch, decode_batch(batch, schema), "d", "r1", "sim"), Wire(message, schema)


def test_a_batch_logged_as_its_message_replays_as_the_gateway_decoded_it(tmp_path: Path) -> None:
    log = IngestLog(tmp_path)
    (a, wire_a), (b, wire_b), c = wire_rows("a"), wire_rows("a", 4, 2), rows("c")
    log.append([a, c, b], [wire_a, None, wire_b])  # a message, a phone's columns, a message: one group
    log.close()
    segment = next(tmp_path.glob("*.log"))
    assert segment.read_bytes()[:4] == b"FLG3"  # the first record is the message as it came
    replayed = [r for _, r in IngestLog(tmp_path).replay()]
    assert [r.episode_id for r in replayed] == ["a", "c", "a"]
    assert same(a, replayed[0]) and same(c, replayed[1]) and same(b, replayed[2])
    assert replayed[0].columns["obs.state"][2, 1] == 7.0  # values, not only shapes


def test_a_message_record_cut_short_is_dropped_and_a_flipped_bit_in_one_is_refused(tmp_path: Path) -> None:
    log = IngestLog(tmp_path)
    first, wire = wire_rows("a")
    log.append([first], [wire])
    log.close()
    segment = next(tmp_path.glob("*.log"))
    whole = segment.read_bytes()
    torn, torn_wire = wire_rows("torn")
    record = b"".join(bytes(part) for part in encode_wire(torn, torn_wire, 1))
    segment.write_bytes(whole + record[: len(record) - 100])  # killed mid-write, never acked
    again = IngestLog(tmp_path)
    assert [r.episode_id for _, r in again.replay()] == ["a"] and again.dropped_tail_bytes == len(record) - 100
    again.close()
    data = bytearray(whole)
    data[WIRE_FRAME.size + 200] ^= 0x01  # inside the first record's header or message
    segment.write_bytes(bytes(data) + record)  # a record follows: a corruption, not a torn end
    with pytest.raises(IngestLogError, match=rf"{segment.name}: record at byte 0 fails its checksum"):
        list(IngestLog(tmp_path).replay())


def test_trim_deletes_segments_the_store_holds_and_replay_starts_after_them(tmp_path: Path) -> None:
    log = IngestLog(tmp_path, segment_bytes=1)  # every append starts a new segment
    for i in range(4):
        log.append([rows(f"e{i}")])
    assert len(list(tmp_path.glob("*.log"))) == 4
    assert log.trim(1) == 2
    assert len(list(tmp_path.glob("*.log"))) == 2
    log.close()
    assert [(n, r.episode_id) for n, r in IngestLog(tmp_path).replay()] == [(2, "e2"), (3, "e3")]
    log = IngestLog(tmp_path, segment_bytes=1)
    list(log.replay())
    log.trim(3)  # everything is in the store: the log is empty
    assert log.bytes() == 0 and list(IngestLog(tmp_path).replay()) == []


def test_a_record_cut_short_at_the_end_is_dropped_and_the_log_goes_on(tmp_path: Path) -> None:
    log = IngestLog(tmp_path)
    log.append([rows("a"), rows("b")])
    log.close()
    segment = next(tmp_path.glob("*.log"))
    whole = segment.stat().st_size
    record = b"".join(bytes(part) for part in encode(rows("torn"), 2))
    with open(segment, "ab") as f:  # a gateway killed in the middle of its write (never acked)
        f.write(record[: len(record) // 2])
    again = IngestLog(tmp_path)
    assert [r.episode_id for _, r in again.replay()] == ["a", "b"]
    assert again.dropped_tail_bytes == len(record) // 2 and segment.stat().st_size == whole
    again.append([rows("c")])
    again.close()
    assert [r.episode_id for _, r in IngestLog(tmp_path).replay()] == ["a", "b", "c"]


def test_a_record_whose_checksum_fails_is_refused_naming_file_and_offset(tmp_path: Path) -> None:
    log = IngestLog(tmp_path)
    log.append([rows("a"), rows("b")])
    log.close()
    segment = next(tmp_path.glob("*.log"))
    data = bytearray(segment.read_bytes())
    data[FRAME.size + 40] ^= 0xFF  # a flipped bit inside the first record
    segment.write_bytes(bytes(data))
    with pytest.raises(IngestLogError, match=rf"{segment.name}: record at byte 0 fails its checksum"):
        list(IngestLog(tmp_path).replay())


def test_trimmed_segments_are_reused_and_replay_never_reads_their_earlier_records(tmp_path: Path) -> None:
    log = IngestLog(tmp_path, segment_bytes=1, spare_segments=2)
    for i in range(3):  # long records first: the files they leave are longer than the short records after them
        log.append([rows(f"long{i}", n=40)])
    inodes = {p.stat().st_ino for p in tmp_path.glob("*.log")}
    log.trim(2)  # all three in the store: two kept as spares, one deleted
    assert len(list(tmp_path.glob("*.spare"))) == 2 and not list(tmp_path.glob("*.log"))
    assert log.append([rows("s3")]) == 3 and log.append([rows("s4")]) == 4
    reused = {p.stat().st_ino for p in tmp_path.glob("*.log")}
    assert reused <= inodes and len(reused) == 2, "the new segments are not the retired files"
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.log"))
    assert on_disk > log.bytes(), "the reused files hold no bytes of their earlier records past the new ones"
    log.close()
    again = IngestLog(tmp_path, segment_bytes=1, spare_segments=2)
    assert [(n, r.episode_id) for n, r in again.replay()] == [(3, "s3"), (4, "s4")]
    assert again.dropped_tail_bytes == 0 and again.append([rows("s5")]) == 5
    again.trim(5)
    again.close()
    assert list(IngestLog(tmp_path).replay()) == []
    assert IngestLog(tmp_path).next_record == 6, "numbering restarted below the spares' stale records"


def test_a_torn_write_over_a_reused_segment_is_dropped(tmp_path: Path) -> None:
    log = IngestLog(tmp_path, spare_segments=1)
    log.append([rows("old", n=40)])
    log.trim(0)
    log.append([rows("a")])  # into the spare, over the old record
    log.close()
    segment = next(tmp_path.glob("*.log"))
    record = b"".join(bytes(part) for part in encode(rows("torn"), 2))
    with open(segment, "r+b") as f:  # a gateway killed halfway through writing record 2 (never acked)
        f.seek(sum(len(bytes(part)) for part in encode(rows("a"), 1)))
        f.write(record[: len(record) // 2])
    again = IngestLog(tmp_path)
    assert [(n, r.episode_id) for n, r in again.replay()] == [(1, "a")]
    assert again.dropped_tail_bytes > 0 and again.append([rows("b")]) == 2
    again.close()
    assert [r.episode_id for _, r in IngestLog(tmp_path).replay()] == ["a", "b"]


def test_records_of_the_first_format_still_replay(tmp_path: Path) -> None:
    """A log written before records carried their number (``FLG1``) is replayed after an upgrade, not lost."""
    data = b""
    for i, episode in enumerate(("x", "y")):
        _, header, *body = (bytes(part) for part in encode(rows(episode), i))
        crc = zlib.crc32(b"".join(body), zlib.crc32(header))
        data += FIRST_FRAME.pack(FIRST_MAGIC, len(header), sum(map(len, body)), crc) + header + b"".join(body)
    (tmp_path / f"{7:016d}.log").write_bytes(data)
    log = IngestLog(tmp_path)
    assert [(n, r.episode_id) for n, r in log.replay()] == [(7, "x"), (8, "y")]
    assert log.append([rows("z")]) == 9


def test_a_gap_in_the_record_numbers_between_segments_is_refused(tmp_path: Path) -> None:
    log = IngestLog(tmp_path, segment_bytes=1)
    for i in range(3):
        log.append([rows(f"e{i}")])
    log.close()
    middle = sorted(tmp_path.glob("*.log"))[1]
    middle.unlink()  # acked records gone: the gateway must not start as if nothing happened
    with pytest.raises(IngestLogError, match=r"records 1\.\.1 are missing"):
        list(IngestLog(tmp_path).replay())


# ---- a real gateway killed between the ack and the store write ----

CHILD = """
import sys, threading, time
from pathlib import Path
from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.gateway.config import GatewayConfig
from cloud.gateway.server import Gateway
import asyncio
root = Path(sys.argv[1])
store = EpisodeStore(root / "store")
store.write = lambda rows: threading.Event().wait()  # the store never takes them in: only the log holds them
async def main():
    gateway = Gateway(GatewayConfig(port=0), store, PolicyRegistry(root / "registry"))
    port = await gateway.start()
    (root / "port").write_text(str(port))
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def _send(port: int, sent: list[pb.StepBatch], held: tuple[str, ...] = ()) -> list[pb.CloudMessage]:
    """Hello (saying which episodes the edge holds), then each batch; the welcome and every answer."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.TunnelStub(channel).Connect()
        hello = pb.Hello(resource=RESOURCE.to_proto(), protocol_version=PROTOCOL_VERSION, uplink_codec="raw")
        hello.held.extend(pb.EpisodeProgress(episode_id=e) for e in held)
        await call.write(pb.EdgeMessage(hello=hello))
        answers = []
        while len(answers) < 1 + len(sent):
            if len(answers) == 1:
                for i, batch in enumerate(sent):
                    batch.batch_id = i + 1
                    await call.write(pb.EdgeMessage(steps=batch))
            message = await asyncio.wait_for(call.read(), timeout=30)
            if message.WhichOneof("body") in ("welcome", "ack", "error"):
                answers.append(message)
        await call.done_writing()
        return answers


def test_a_gateway_killed_after_its_ack_and_before_the_store_write_puts_the_rows_in_the_store_on_start(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "port").exists():
            assert child.poll() is None and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
        answers = asyncio.run(_send(int((tmp_path / "port").read_text()), batches("raw", "ep-kill")))
        acks = [a.ack for a in answers[1:]]
        assert sorted(a.batch_id for a in acks) == [1, 2, 3] and max(a.next_seq for a in acks) == 12, answers
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    class HeldStore(EpisodeStore):  # a store that takes the logged rows only once the test says so
        gate = threading.Event()

        def write(self, batches):
            self.gate.wait(timeout=30)
            return super().write(batches)

    async def restart() -> None:
        store = HeldStore(tmp_path / "store")
        gateway = Gateway(GatewayConfig(port=0), store, PolicyRegistry(tmp_path / "registry"))
        port = await gateway.start()
        try:
            assert store.committed_rows("cam_arm") == 0
            # a resend of the last batch: its rows are still only in the log, yet the gateway knows them
            welcome, ack = await _send(port, batches("raw", "ep-kill")[2:], held=("ep-kill",))
            assert welcome.welcome.stored[0].next_seq == 12 and ack.ack.next_seq == 12
            HeldStore.gate.set()
            assert await gateway.writer.drain(30)
        finally:
            await gateway.stop()
        assert store.committed_rows("cam_arm") == 12 and store.next_seq("ep-kill") == 12
        stored = store.read("cam_arm", ["obs.front", "seq"])
        assert stored["seq"].tolist() == list(range(12))  # each seq once: the resend was not stored again
        assert np.abs(stored["obs.front"].astype(int) - FRAMES.astype(int)).mean() < 8  # encoded at replay (H.264)
        assert store.schema("cam_arm")["obs.front"].codec == "h264"

    asyncio.run(restart())


def test_a_tunnel_share_past_the_uncompacted_bound_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="max_unwritten_bytes_per_tunnel") as refused:
        GatewayConfig(max_uncompacted_bytes=32 << 20, max_unwritten_bytes_per_tunnel=64 << 20)
    assert "max_uncompacted_bytes" in str(refused.value)
    with pytest.raises(ValueError, match="max_uncompacted_bytes"):
        GatewayConfig(max_uncompacted_bytes=1 << 20, flush_bytes=2 << 20)
    assert GatewayConfig(max_uncompacted_bytes=400 << 20).max_unwritten_bytes_per_tunnel is None  # a quarter, later
