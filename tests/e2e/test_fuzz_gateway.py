"""Hypothesis drives hostile tunnel streams against a real gateway while a well-behaved edge streams on.

Each example is one stream over real gRPC: a first message (a hello, possibly mutated; another kind of
message; or bytes that are no EdgeMessage at all), then steps, applied, heartbeats, empty bodies, a second
hello or garbage bytes. For every message the test knows, from the codec and the limits alone, what the
gateway must answer: an Error naming exactly the field the local check names, an ack for a valid batch, a
heartbeat. Every stream must end within its deadline. Afterwards the gateway process is alive, the
well-behaved edge's steps keep growing in the store, and the store holds from the fuzzer only batches the
local decoder accepts, byte for byte.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cloud.data.store import EpisodeStore
from cloud.gateway.sessions import check_resource
from protocol import PROTOCOL_VERSION
from protocol import tunnel_pb2 as pb
from protocol.arrays import ALLOWED_DTYPES, CodecError, encode_array
from protocol.limits import check_applied, check_hello
from protocol.steps import Schema, decode_batch, encode_batch, schema_for
from tests.e2e.fleet import Fleet, wait_until
from tests.e2e.raw_edge import RESOURCE, ByteStream

MAX_BATCH_BYTES = 1 << 20  # the cloud runs with --max-batch-mb 1
EXAMPLES = int(os.environ.get("FLEETLOOP_FUZZ_EXAMPLES", "0"))
ANSWER_TIMEOUT_S = 10.0
wire_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
names = st.text("abcdefghij_0123456789", min_size=1, max_size=10)
streams_started = itertools.count()


@pytest.fixture(scope="module")
def gateway_fleet(tmp_path_factory) -> Iterator[Fleet]:
    """One cloud and a well-behaved edge for the whole module (module scope: hypothesis runs every example
    against it), with a channel for the fuzzer and what the fuzzing recorded so far."""
    fleet = Fleet(tmp_path_factory.mktemp("fuzz"))
    try:
        fleet.start_cloud("--max-batch-mb", str(MAX_BATCH_BYTES >> 20))
        fleet.start_edge("robot-1")
        fleet.store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
        fleet.channel = grpc.insecure_channel(fleet.target, options=[("grpc.max_send_message_length", 8 << 20)])
        fleet.valid = {}  # (resource id, episode id) -> columns of a batch the local decoder accepts
        fleet.acked = set()  # (resource id, episode id) the gateway acked
        wait_until(lambda: edge_steps(fleet) > 0, 90, "the well-behaved edge's first steps")
        yield fleet
        fleet.channel.close()
    finally:
        fleet.stop_all()


def edge_steps(fleet: Fleet, resource_id: str = "robot-1") -> int:
    fleet.store.refresh()
    return sum(e.num_steps for e in fleet.store.episodes() if e.resource_id == resource_id)


# ---- what the fuzzer sends ------------------------------------------------------------------------------


def parses(data: bytes) -> bool:
    try:
        pb.EdgeMessage.FromString(data)
    except DecodeError:
        return False
    return True


garbage = st.one_of(st.binary(min_size=1, max_size=64), st.binary(max_size=8).map(lambda b: b"\xff\xff" + b)).filter(
    lambda b: not parses(b)
)


@st.composite
def hellos(draw, mutations: int = 3) -> pb.Hello:
    hello = pb.Hello(resource=RESOURCE.to_proto(), protocol_version=PROTOCOL_VERSION)
    caps = hello.resource.capabilities
    for _ in range(draw(st.integers(0, mutations))):
        part = draw(
            st.sampled_from(
                [
                    "kind", "source", "id", "embodiment", "control_hz", "observation", "action", "cameras",
                    "policy_name", "policy_version", "protocol_version", "held", "token",
                ]
            )
        )  # fmt: skip
        if part == "kind":
            hello.resource.kind = draw(st.one_of(st.sampled_from(["robot", "phone", "operator", ""]), wire_text))
        elif part == "source":
            hello.resource.source = draw(st.one_of(st.sampled_from(["sim", "robot", "phone"]), wire_text))
        elif part == "id":
            hello.resource.id = draw(st.one_of(st.just(""), wire_text, st.text("x", min_size=129, max_size=200)))
        elif part == "embodiment":
            caps.embodiment = draw(st.one_of(names, wire_text, st.just("../escape"), st.text("e", min_size=65)))
        elif part == "control_hz":
            caps.control_hz = draw(st.floats(allow_nan=True, allow_infinity=True))
        elif part == "observation":
            del caps.observation[:]
            for _ in range(draw(st.sampled_from([0, 1, 2, 40]))):
                caps.observation.add(
                    name=draw(st.one_of(names, wire_text, st.sampled_from(["state", "a/b", ""]))),
                    dtype=draw(st.one_of(st.sampled_from(sorted(ALLOWED_DTYPES)), wire_text)),
                    shape=draw(st.lists(st.integers(-2, 5000), max_size=5)),
                )
        elif part == "action":
            caps.action.dtype = draw(st.one_of(st.sampled_from(["<f4", "<f8", "|O", "<f2"]), wire_text))
            caps.action.shape[:] = draw(st.lists(st.integers(-1, 6), max_size=3))
            size = draw(st.integers(0, 5))
            caps.action.low[:] = draw(st.lists(st.floats(), min_size=size, max_size=size))
            caps.action.high[:] = draw(st.lists(st.floats(), min_size=size, max_size=size))
        elif part == "cameras":
            caps.cameras[:] = draw(st.lists(wire_text, max_size=40))
        elif part == "policy_name":
            hello.policy_name = draw(st.one_of(names, wire_text, st.just("a b"), st.text("p", min_size=65)))
        elif part == "policy_version":
            hello.policy_version = draw(st.integers(-(1 << 63), (1 << 63) - 1))
        elif part == "protocol_version":
            hello.protocol_version = draw(st.integers(-(1 << 31), (1 << 31) - 1))
        elif part == "held":
            for _ in range(draw(st.sampled_from([1, 3, 70_000]))):
                hello.held.add(episode_id=draw(st.one_of(names, wire_text)), next_seq=draw(st.integers(-5, 1 << 40)))
        elif part == "token":
            hello.token = draw(st.one_of(wire_text, st.text("t", min_size=5000, max_size=5000)))
    return hello


@st.composite
def follow_ups(draw) -> tuple:
    """One message after the hello, as (kind, detail) for the test to build."""
    kind = draw(st.sampled_from(["steps", "steps", "steps", "applied", "heartbeat", "empty", "hello", "garbage"]))
    if kind == "steps":
        mutation = draw(
            st.sampled_from(
                ["none", "none", "drop", "extra", "dtype", "shape", "nan", "num_steps", "episode_id", "first_seq",
                 "task", "data", "compression", "big", "bool"]
            )
        )  # fmt: skip
        return kind, (mutation, draw(st.integers(1, 8)), draw(st.integers(0, 2**32 - 1)))
    if kind == "applied":
        return kind, (draw(st.one_of(names, wire_text)), draw(st.integers(-(1 << 63), (1 << 63) - 1)))
    if kind == "heartbeat":
        return kind, draw(st.integers(-(1 << 63), (1 << 63) - 1))
    if kind == "garbage":
        return kind, draw(garbage)
    return kind, None


first_messages = st.one_of(
    hellos(mutations=0).map(lambda h: ("hello", h)),
    hellos(mutations=1).map(lambda h: ("hello", h)),
    hellos().map(lambda h: ("hello", h)),
    st.sampled_from(["steps", "applied", "heartbeat", "empty"]).map(lambda k: (k, None)),
    garbage.map(lambda b: ("garbage", b)),
)


# ---- what the gateway must answer, from the local checks ------------------------------------------------


def hello_error(hello: pb.Hello) -> str | None:
    """The field the gateway must name for this hello (in its order of checks), or None when it is welcome."""
    try:
        check_hello(hello)
        if hello.protocol_version != PROTOCOL_VERSION:
            return "hello.protocol_version"
        check_resource(hello.resource)
    except CodecError as err:
        return err.field
    return None


def session_schema(hello: pb.Hello) -> Schema:
    caps = hello.resource.capabilities
    return schema_for([(s.name, s.dtype, s.shape) for s in caps.observation], (caps.action.dtype, caps.action.shape))


def keep_store_consistent(hello: pb.Hello) -> None:
    """A welcome hello whose schema differs from the Panda's gets an embodiment of its own.

    The store refuses a second schema for a dataset, and the gateway does not yet answer that with an Error
    (the stream ends with UNKNOWN); the fuzzer sends each schema to a dataset of its own instead.
    """
    schema = session_schema(hello)
    if hello.resource.capabilities.embodiment == "panda_pick_cube" and schema == session_schema(
        pb.Hello(resource=RESOURCE.to_proto())
    ):
        return
    hello.resource.capabilities.embodiment = (
        "fz-" + hashlib.sha256(repr(sorted(schema.items())).encode()).hexdigest()[:16]
    )


def pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]  # rng.choice would turn "x\0" into "x" (numpy strings)


def build_batch(schema: Schema, detail: tuple, episode_id: str, batch_id: int) -> pb.StepBatch:
    mutation, steps, seed = detail
    rng = np.random.default_rng(seed)
    columns = {
        name: (rng.random((steps, *shape)) * 4 - 2).astype(dtype)
        if dtype[1] == "f"
        else rng.integers(0, 2, (steps, *shape)).astype(dtype)
        for name, (dtype, shape) in schema.items()
    }
    batch = encode_batch(episode_id, 0, columns, task="fuzz", batch_id=batch_id, compression=pick(rng, ["", "zlib"]))
    name = str(rng.choice(sorted(schema)))
    if mutation == "drop":
        del batch.columns[name]
    elif mutation == "extra":
        batch.columns["obs.extra"].CopyFrom(encode_array(np.zeros((steps, 2), np.float32)))
    elif mutation == "dtype":
        other = sorted(ALLOWED_DTYPES - {schema[name][0]})
        batch.columns[name].dtype = other[int(rng.integers(len(other)))]
    elif mutation == "shape":
        batch.columns[name].shape.append(1)
    elif mutation == "nan":
        floats = [n for n, (d, s) in schema.items() if d[1] == "f" and int(np.prod(s)) > 0]
        values = np.zeros((steps, *schema[floats[0]][1]), schema[floats[0]][0])
        values.flat[int(rng.integers(values.size))] = pick(rng, [np.nan, np.inf, -np.inf])
        batch.columns[floats[0]].CopyFrom(encode_array(values))
    elif mutation == "num_steps":
        batch.num_steps = int(pick(rng, [0, -1, steps + 1, 1 << 30]))
    elif mutation == "episode_id":
        batch.episode_id = str(pick(rng, ["", "x" * 129, "tab\there", "new\nline", "fz-\u0000-ep"]))
    elif mutation == "first_seq":
        batch.first_seq = int(pick(rng, [-1, -(1 << 63), 5]))  # 5: a gap the store refuses
    elif mutation == "task":
        batch.task = str(pick(rng, ["t" * 129, "line\nbreak"]))
    elif mutation == "data":
        batch.columns[name].data = batch.columns[name].data[:-1] + b"\x00\x00"
    elif mutation == "compression":
        batch.columns[name].compression = str(
            rng.choice(["gzip", "zlib" if batch.columns[name].compression == "" else "lz4"])
        )
    elif mutation == "big":
        batch.columns["obs.pad"].CopyFrom(encode_array(np.zeros(MAX_BATCH_BYTES + 1024, np.uint8)))
    elif mutation == "bool":
        batch.columns["done"].CopyFrom(pb.Array(dtype="|b1", shape=[steps], data=bytes([2] * steps)))
    return batch


def batch_error(batch: pb.StepBatch, schema: Schema) -> str | None:
    try:
        decode_batch(batch, schema, MAX_BATCH_BYTES)
    except CodecError as err:
        return err.field
    return None


# ---- the property ---------------------------------------------------------------------------------------


def check_one_stream(fleet: Fleet, first: tuple, rest: list) -> None:
    """One hostile stream: the first message, then (once welcome) the follow-ups, each answered as the local
    checks say. Records in ``fleet.valid`` and ``fleet.acked`` what the store may and must hold afterwards."""
    stream = ByteStream(fleet.channel, timeout_s=60)
    try:
        hello = send_first_message(stream, first, resource_id=f"fz-{next(streams_started)}")
        if hello is not None:
            send_follow_ups(fleet, stream, hello, rest)
    finally:
        stream.cancel()


def send_first_message(stream: ByteStream, first: tuple, resource_id: str) -> pb.Hello | None:
    """Sends the first message; a refused one gets one Error naming the field, then the stream ends (None).
    Returns the hello the gateway welcomed."""
    kind, detail = first
    if kind == "hello":
        hello = detail
        if hello.resource.id == RESOURCE.id:
            hello.resource.id = resource_id
        expected = hello_error(hello)
        if expected is None:
            keep_store_consistent(hello)
        stream.send(pb.EdgeMessage(hello=hello).SerializeToString())
    elif kind == "garbage":
        expected = "(undecodable)"
        stream.send(detail)
    else:
        expected = "hello"
        stream.send(pb.EdgeMessage(**({kind: {}} if kind != "empty" else {})).SerializeToString())

    event(f"first message: {kind}, refused by {expected}")
    if expected is not None:  # refused: one Error naming the field, then the stream ends
        assert stream.finish(ANSWER_TIMEOUT_S), "the gateway did not end a refused stream"
        if expected == "(undecodable)":
            # grpc fails to parse before the gateway's code runs: the stream ends, with no field to name.
            assert stream.code in (
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.INTERNAL,
            )
            return None
        errors = [a.error for a in stream.answers if a.HasField("error")]
        assert [e.field for e in errors] == [expected], stream.answers
        assert stream.code == grpc.StatusCode.INVALID_ARGUMENT, (stream.code, stream.details)
        return None

    assert stream.wait_for(lambda a: any(m.HasField("welcome") for m in a), ANSWER_TIMEOUT_S)
    assert not stream.ended.is_set(), (stream.code, stream.details)
    return hello


@dataclass
class Sent:
    """What went down one welcomed stream, and so what must come back."""

    resource: str
    batches: dict[int, tuple[pb.StepBatch, str | None]] = field(default_factory=dict)  # id -> (batch, bad field)
    expect_errors: list[str] = field(default_factory=list)  # fields of errors without a batch id, in order
    heartbeats: int = 0
    alive: bool = True  # False once garbage went down: the gateway ends the stream


def send_follow_ups(fleet: Fleet, stream: ByteStream, hello: pb.Hello, rest: list) -> None:
    """After a welcome: sends the follow-ups, then checks every answer against the local checks."""
    schema = session_schema(hello)
    sent = Sent(hello.resource.id)
    for n, (kind, detail) in enumerate(rest):
        if kind == "steps":
            batch_id = 1000 + n
            batch = build_batch(schema, detail, f"fz-ep-{sent.resource}-{n}", batch_id)
            sent.batches[batch_id] = (batch, batch_error(batch, schema))
            if sent.batches[batch_id][1] is None and batch.first_seq == 0:
                fleet.valid[(sent.resource, batch.episode_id)] = decode_batch(batch, schema, MAX_BATCH_BYTES)
            stream.send(pb.EdgeMessage(steps=batch).SerializeToString())
        elif kind == "applied":
            policy_name, version = detail
            stream.send(
                pb.EdgeMessage(applied=pb.PolicyApplied(policy_name=policy_name, version=version)).SerializeToString()
            )
            try:
                check_applied(pb.PolicyApplied(policy_name=policy_name, version=version))
            except CodecError as err:
                sent.expect_errors.append(err.field)
        elif kind == "heartbeat":
            sent.heartbeats += 1
            stream.send(pb.EdgeMessage(heartbeat=pb.Heartbeat(mono_ns=detail)).SerializeToString())
        elif kind == "empty":
            sent.expect_errors.append("body")
            stream.send(b"")
        elif kind == "hello":
            sent.expect_errors.append("hello")
            stream.send(pb.EdgeMessage(hello=hello).SerializeToString())
        else:  # garbage: an Error naming it, then the stream ends
            sent.expect_errors.append("edge_message")
            stream.send(detail)
            sent.alive = False
            break
    if sent.alive:  # a last heartbeat: its answer comes after everything sent before it was read
        sent.heartbeats += 1
        stream.send(pb.EdgeMessage(heartbeat=pb.Heartbeat(mono_ns=1)).SerializeToString())
    check_answers(fleet, stream, sent)


def check_answers(fleet: Fleet, stream: ByteStream, sent: Sent) -> None:
    def answered(answers: list[pb.CloudMessage]) -> bool:
        done = {a.ack.batch_id for a in answers if a.HasField("ack")}
        done |= {a.error.batch_id for a in answers if a.HasField("error")}
        beats = sum(a.HasField("heartbeat") for a in answers)
        return not sent.alive or (set(sent.batches) <= done and beats >= sent.heartbeats)

    assert stream.wait_for(answered, ANSWER_TIMEOUT_S), f"no answer in time: {stream.answers}"
    assert stream.finish(ANSWER_TIMEOUT_S), "the gateway did not end the stream after the edge closed it"
    assert stream.code == grpc.StatusCode.OK, (stream.code, stream.details)

    batch_errors = {a.error.batch_id: a.error for a in stream.answers if a.HasField("error") and a.error.batch_id}
    other_errors = [a.error.field for a in stream.answers if a.HasField("error") and not a.error.batch_id]
    acks = {a.ack.batch_id: a.ack for a in stream.answers if a.HasField("ack")}
    assert other_errors == sent.expect_errors
    for batch_id, (batch, field_name) in sent.batches.items():
        if batch_id not in acks and batch_id not in batch_errors:
            assert not sent.alive, f"batch {batch_id} got no answer"
            continue
        if field_name is not None:
            assert batch_id in batch_errors and batch_errors[batch_id].field == field_name, stream.answers
        elif batch.first_seq > 0:  # valid, but a gap in the episode: the store refuses it by field
            assert batch_errors[batch_id].field == "step_batch.first_seq"
        else:
            event("a valid batch was acked")
            assert acks[batch_id].next_seq == batch.num_steps, stream.answers
            fleet.acked.add((sent.resource, batch.episode_id))
    for error in batch_errors.values():
        assert error.code == "invalid_argument" and error.field.startswith("step_batch"), error


FUZZING = settings(
    max_examples=EXAMPLES or 200,
    derandomize=not EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
STREAMS = given(first=first_messages, rest=st.lists(follow_ups(), max_size=6))
# The whole fuzzing run as one call, for a test that needs the gateway fuzzed before it looks.
fuzz_streams = FUZZING(STREAMS(check_one_stream))


@FUZZING
@STREAMS
def test_fuzzed_streams_get_field_errors_and_harm_no_one(gateway_fleet: Fleet, first: tuple, rest: list) -> None:
    check_one_stream(gateway_fleet, first, rest)


def test_after_the_fuzzing_the_gateway_serves_and_stored_only_valid_batches(gateway_fleet: Fleet) -> None:
    """Fuzzes the gateway itself first (the same streams as the test above, on this module's fleet, so it holds
    alone and in any order); then the gateway lives on, the good edge streams on, and the store holds from the
    fuzzer exactly the valid batches, byte for byte; every acked one is there."""
    fleet = gateway_fleet
    fuzz_streams(fleet)
    assert fleet.processes["cloud"].poll() is None, "the gateway died"
    before = edge_steps(fleet)
    wait_until(lambda: edge_steps(fleet) > before + 20, 30, "the well-behaved edge to keep streaming")
    store = fleet.store
    store.refresh()
    fuzzed = {(e.resource_id, e.episode_id): e for e in store.episodes() if e.resource_id.startswith("fz-")}
    assert fleet.acked, "no fuzzed batch was valid and acked: the generator lost its way"
    assert fleet.acked <= set(fuzzed) <= set(fleet.valid)
    assert all(e.resource_id.startswith("fz-") or not e.episode_id.startswith("fz-") for e in store.episodes())
    for key, episode in fuzzed.items():
        stored = store.read(episode.dataset)
        rows = store.row_indices(episode.dataset, episode.episode_id)
        assert episode.num_steps == len(fleet.valid[key]["action"])
        for name, values in fleet.valid[key].items():
            np.testing.assert_array_equal(stored[name][rows], values, err_msg=f"{episode.episode_id} {name}")
    assert "gateway task" not in fleet.log("cloud"), "a gateway task died of an unhandled exception"
