"""Size and count limits on every message an edge sends; every refusal names the field."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.data.columns import normalize_schema as _normalize
from cloud.data.store import NAME as STORE_NAME
from cloud.data.store import ColumnSpec
from cloud.data.version_registry import POLICY_NAME as REGISTRY_POLICY_NAME
from cloud.gateway.sessions import check_resource
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from hal.sim import SIM_TASKS
from protocol import PROTOCOL_VERSION
from protocol import tunnel_pb2 as pb
from protocol.arrays import ALLOWED_DTYPES, CodecError
from protocol.limits import (
    MAX_CAMERAS,
    MAX_CONTROL_MESSAGE_BYTES,
    MAX_HELD_EPISODES,
    MAX_HELLO_BYTES,
    MAX_OBSERVATIONS,
    MAX_ROW_BYTES,
    MAX_TOKEN_LENGTH,
    check_applied,
    check_heartbeat,
    check_hello,
)
from protocol.steps import schema_for

RESOURCE = ResourceInfo(
    id="robot-1",
    kind="robot",
    source="sim",
    capabilities=Capabilities(
        observation=(ArraySpec("state", "float32", (3,)), ArraySpec("front", "uint8", (8, 8, 3), (0.0,), (255.0,))),
        action=ArraySpec("action", "float32", (2,), (-1, -1), (1, 1)),
        control_hz=10.0,
        embodiment="arm",
        cameras=("front",),
    ),
)


def refused(check, message) -> str:
    with pytest.raises(CodecError) as err:
        check(message)
    return err.value.field


def resource(mutate) -> pb.Resource:
    message = RESOURCE.to_proto()
    mutate(message)
    return message


def test_shipped_resources_pass() -> None:
    check_resource(RESOURCE.to_proto())
    for name, spec in SIM_TASKS.items():
        caps = Capabilities(observation=spec.observation, action=spec.action, control_hz=10.0, embodiment=name)
        check_resource(ResourceInfo(id="r", kind="robot", source="sim", capabilities=caps).to_proto())


def add_observations(count: int):
    def mutate(r: pb.Resource) -> None:
        for i in range(count):
            r.capabilities.observation.add(name=f"o{i}", dtype="<f4", shape=[1])

    return mutate


C = "hello.resource.capabilities"


def obs(i: int, **fields):
    return lambda r: [setattr(r.capabilities.observation[i], k, v) for k, v in fields.items()]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (add_observations(MAX_OBSERVATIONS), f"{C}.observation"),
        (lambda r: r.capabilities.cameras.extend(["c"] * MAX_CAMERAS), f"{C}.cameras"),
        (lambda r: r.capabilities.cameras.append(""), f"{C}.cameras[1]"),
        (obs(1, name="state"), f"{C}.observation[1].name"),  # a duplicate would collapse two columns
        (obs(0, name="a/b"), f"{C}.observation[0].name"),  # becomes a path in the store
        (obs(0, name="x" * 129), f"{C}.observation[0].name"),
        (obs(0, dtype="|O"), f"{C}.observation[0].dtype"),
        (lambda r: r.capabilities.observation[1].shape.extend([1, 1]), f"{C}.observation[1].shape"),
        (lambda r: r.capabilities.observation[0].shape.__setitem__(0, 0), f"{C}.observation[0].shape"),
        (lambda r: r.capabilities.observation[0].shape.extend([4096, 4096]), f"{C}.observation[0].shape"),
        (lambda r: r.capabilities.action.low.append(0), f"{C}.action.high"),
        (lambda r: (r.capabilities.action.low.append(0), r.capabilities.action.high.append(1)), f"{C}.action.low"),
        (lambda r: r.capabilities.action.low.__setitem__(0, math.nan), f"{C}.action.low"),
        (lambda r: r.capabilities.action.high.__setitem__(1, math.inf), f"{C}.action.high"),
        (lambda r: r.capabilities.action.low.__setitem__(1, 2.0), f"{C}.action.low[1]"),
        (lambda r: setattr(r.capabilities, "embodiment", "e" * 65), f"{C}.embodiment"),  # also a policy name
        (lambda r: setattr(r.capabilities, "embodiment", "../up"), f"{C}.embodiment"),
        (lambda r: setattr(r.capabilities, "control_hz", math.nan), f"{C}.control_hz"),
        (lambda r: setattr(r, "kind", "k" * 10_000), "hello.resource.kind"),
        (lambda r: setattr(r, "id", "a\nb"), "hello.resource.id"),
    ],
)
def test_resource_limits_name_the_field(mutate, field: str) -> None:
    with pytest.raises(CodecError) as err:
        check_resource(resource(mutate))
    assert err.value.field == field
    assert len(str(err.value)) < 1000  # what the sender chose is not echoed back at length


def test_a_row_bigger_than_a_batch_is_refused() -> None:
    side = int(math.isqrt(MAX_ROW_BYTES // 8)) + 1  # one f8 row of side x side is just past the limit
    message = resource(lambda r: r.capabilities.observation.add(name="big", dtype="<f8", shape=[side, side]))
    with pytest.raises(CodecError, match="bytes") as err:
        check_resource(message)
    assert err.value.field == "hello.resource.capabilities.observation[2].shape"


def hello(**fields) -> pb.Hello:
    return pb.Hello(resource=RESOURCE.to_proto(), protocol_version=PROTOCOL_VERSION, **fields)


def test_hello_limits_name_the_field() -> None:
    check_hello(hello(policy_name="pick", held=[pb.EpisodeProgress(episode_id="ep", next_seq=3)]))
    too_many = [pb.EpisodeProgress(episode_id="e", next_seq=0)] * (MAX_HELD_EPISODES + 1)
    assert refused(check_hello, hello(held=too_many)) == "hello.held"
    assert (
        refused(check_hello, hello(held=[pb.EpisodeProgress(episode_id="", next_seq=0)])) == "hello.held[0].episode_id"
    )
    assert (
        refused(check_hello, hello(held=[pb.EpisodeProgress(episode_id="e", next_seq=-1)])) == "hello.held[0].next_seq"
    )
    assert refused(check_hello, hello(token="t" * (MAX_TOKEN_LENGTH + 1))) == "hello.token"
    assert refused(check_hello, hello(policy_name="a b")) == "hello.policy_name"
    assert refused(check_hello, hello(policy_name="p" * 65)) == "hello.policy_name"
    assert refused(check_hello, hello(policy_version=-1)) == "hello.policy_version"
    check_hello(hello(policy_name="pick", outcome_policy="pick.reward", outcome_version=2))
    assert refused(check_hello, hello(outcome_policy="../reward")) == "hello.outcome_policy"
    assert refused(check_hello, hello(outcome_policy="r" * 65)) == "hello.outcome_policy"
    assert refused(check_hello, hello(outcome_policy="pick.reward", outcome_version=-1)) == "hello.outcome_version"
    assert refused(check_hello, hello(outcome_version=3)) == "hello.outcome_version"  # a version of nothing
    assert refused(check_hello, hello(token="t" * MAX_HELLO_BYTES)) == "hello"  # size first


def test_applied_and_heartbeat_limits() -> None:
    check_applied(pb.PolicyApplied(policy_name="pick", version=3, applied_mono_ns=-5))
    assert refused(check_applied, pb.PolicyApplied(policy_name="", version=3)) == "applied.policy_name"
    assert refused(check_applied, pb.PolicyApplied(policy_name="p", version=0)) == "applied.version"
    assert refused(check_applied, pb.PolicyApplied(policy_name="p" * 5000, version=1)) == "applied"
    check_heartbeat(pb.Heartbeat(mono_ns=-(1 << 63)))
    padded = pb.Heartbeat(mono_ns=1)
    padded.MergeFromString(b"\x12" + bytes([0x80, 0x40]) + b"\0" * 8192)  # an unknown field 2 of 8 KiB
    assert padded.ByteSize() > MAX_CONTROL_MESSAGE_BYTES
    assert refused(check_heartbeat, padded) == "heartbeat"


specs = st.builds(
    lambda name, dtype, shape, n: pb.ArraySpec(name=name, dtype=dtype, shape=shape, low=[0.0] * n, high=[1.0] * n),
    st.one_of(st.text(max_size=10), st.sampled_from(["state", "front", "a.b", "-x", "x" * 129])),
    st.one_of(st.sampled_from(sorted(ALLOWED_DTYPES)), st.text(max_size=4)),
    st.lists(st.integers(-1, 5000), max_size=5),
    st.integers(0, 3),
)


@settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    observation=st.lists(specs, max_size=4),
    action=specs,
    embodiment=st.one_of(st.text(max_size=8), st.sampled_from(["arm", "e" * 64, "e" * 65, ".x"])),
    control_hz=st.floats(),
)
def test_whatever_check_resource_accepts_the_store_and_registry_accept(
    observation, action, embodiment, control_hz
) -> None:
    """The gateway's checks come first: nothing they let through fails later in the store or the registry."""
    message = pb.Resource(id="r", kind="robot", source="sim")
    message.capabilities.observation.extend(observation)
    message.capabilities.action.CopyFrom(action)
    message.capabilities.embodiment = embodiment
    message.capabilities.control_hz = control_hz
    try:
        info = check_resource(message)
    except CodecError as err:
        assert err.field.startswith("hello.resource.capabilities")
        return
    caps = info.capabilities
    schema = schema_for([(s.name, s.dtype, s.shape) for s in caps.observation], (caps.action.dtype, caps.action.shape))
    assert len(schema) == len(caps.observation) + 7  # no observation collapsed into another
    _normalize({k: ColumnSpec(d, s) for k, (d, s) in schema.items()})
    assert STORE_NAME.match(caps.embodiment) and REGISTRY_POLICY_NAME.match(caps.embodiment)
    for spec in (*caps.observation, caps.action):
        assert np.dtype(spec.dtype).itemsize * math.prod(spec.shape) <= MAX_ROW_BYTES


def test_a_heartbeat_backlog_is_refused_when_negative_or_not_a_number() -> None:
    check_heartbeat(pb.Heartbeat(backlog_steps=1240, backlog_bytes=38_000_000, backlog_oldest_s=42.0))
    assert refused(check_heartbeat, pb.Heartbeat(backlog_steps=-1)) == "heartbeat.backlog_steps"
    assert refused(check_heartbeat, pb.Heartbeat(backlog_bytes=-5)) == "heartbeat.backlog_bytes"
    assert refused(check_heartbeat, pb.Heartbeat(backlog_oldest_s=float("nan"))) == "heartbeat.backlog_oldest_s"
    assert refused(check_heartbeat, pb.Heartbeat(backlog_oldest_s=-1.0)) == "heartbeat.backlog_oldest_s"
