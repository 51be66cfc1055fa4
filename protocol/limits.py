"""Size and count limits on every message an edge sends, and the checks that enforce them.

Every bound here is checked before the gateway acts on a message; a message past one is refused with a
CodecError naming the field. Step batches are bounded in protocol/steps.py (bytes, steps, columns by the
schema) and arrays in protocol/arrays.py (dtype, dimensions, decoded bytes, inflation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sized

import numpy as np

from protocol import tunnel_pb2 as pb
from protocol.arrays import ALLOWED_DTYPES, CodecError
from protocol.steps import MAX_BATCH_BYTES, MAX_ID_LENGTH, check_id, quoted

# Hello: one per stream. Its size is dominated by the resume points of episodes still in the edge's spool.
MAX_HELLO_BYTES = 8 << 20
MAX_HELD_EPISODES = 65_536  # about a week of 10 s episodes spooled while offline
MAX_TOKEN_LENGTH = 4096
MAX_OBSERVATIONS = 32
MAX_CAMERAS = 32
MAX_SPEC_DIMS = 4
MAX_SPEC_DIM = 4096
MAX_ROW_BYTES = MAX_BATCH_BYTES  # one step of one column; a bigger row could never travel in a batch
MAX_CONTROL_HZ = 1000.0
# PolicyApplied and Heartbeat carry a few numbers and one name.
MAX_CONTROL_MESSAGE_BYTES = 4096

# What an edge may say it waits for in its heartbeats (``Heartbeat.state``): "" while it simply works.
WAITING_FOR_RESET = "waiting for reset"  # an episode ended; a person (or a topic, or a timeout) says the scene is reset
# the synchronous schedule's robot ran its episodes with this version; it holds until the learner pushes the next
WAITING_FOR_VERSION = "waiting for a new version"
EDGE_STATES = ("", WAITING_FOR_RESET, WAITING_FOR_VERSION)

# Names that become paths: dataset (the embodiment), columns (obs.<name>) and policy directories.
STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A dataset's reward classifier is published as the policy ``<dataset>.reward``.
REWARD_SUFFIX = ".reward"


def check_count(items: Sized, limit: int, field: str, noun: str) -> None:
    """At most ``limit`` items (a repeated field, a string's characters), or an error naming ``field``."""
    if len(items) > limit:
        raise CodecError(field, f"{len(items)} {noun}, at most {limit}")


def check_size(message, limit: int, field: str) -> None:
    size = message.ByteSize()
    if size > limit:
        raise CodecError(field, f"{size} bytes exceeds the limit of {limit}")


def check_name(value: str, field: str, pattern: re.Pattern[str], what: str) -> None:
    if not value:
        raise CodecError(field, "is missing")
    if not pattern.fullmatch(value):
        shown = value if len(value) <= MAX_ID_LENGTH else value[:MAX_ID_LENGTH] + "..."
        raise CodecError(field, f"{shown!r} must be {what}")


def case_twin(name: str, taken: Iterable[str]) -> str | None:
    """The name in ``taken`` that differs from ``name`` only in case (None when there is none): on a case-insensitive
    filesystem both are one folder, so a name is unique regardless of case."""
    folded = name.casefold()
    return next((other for other in taken if other != name and other.casefold() == folded), None)


def check_policy_name(value: str, field: str) -> None:
    check_name(value, field, POLICY_NAME, "1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)")


def check_spec(spec: pb.ArraySpec, field: str, name_pattern: re.Pattern[str] | None = STORE_NAME) -> None:
    """An observation or action spec: a name, an allowed dtype, a bounded shape, and finite limits that fit it."""
    if name_pattern is None:
        check_id(spec.name, f"{field}.name")
    else:
        check_name(spec.name, f"{field}.name", name_pattern, "1-128 letters, digits, '_', '.', '-'")
    if spec.dtype not in ALLOWED_DTYPES:
        raise CodecError(f"{field}.dtype", f"{spec.dtype!r} is not an allowed dtype; allowed: {sorted(ALLOWED_DTYPES)}")
    shape = list(spec.shape)
    if len(shape) > MAX_SPEC_DIMS or any(not 0 < d <= MAX_SPEC_DIM for d in shape):
        raise CodecError(
            f"{field}.shape", f"unsupported shape {shape}: at most {MAX_SPEC_DIMS} dims of 1..{MAX_SPEC_DIM}"
        )
    size = math.prod(shape)
    row_bytes = size * np.dtype(spec.dtype).itemsize
    if row_bytes > MAX_ROW_BYTES:
        raise CodecError(f"{field}.shape", f"one row of {shape} is {row_bytes} bytes, at most {MAX_ROW_BYTES}")
    if len(spec.low) != len(spec.high):
        raise CodecError(f"{field}.high", f"{len(spec.high)} values for {len(spec.low)} in low")
    if len(spec.low) not in (0, 1, size):
        raise CodecError(f"{field}.low", f"{len(spec.low)} values: give none, one, or one per element ({size})")
    for name, values in (("low", spec.low), ("high", spec.high)):
        if not all(math.isfinite(v) for v in values):
            raise CodecError(f"{field}.{name}", "contains NaN or infinity")
    for i, (lo, hi) in enumerate(zip(spec.low, spec.high, strict=True)):
        if lo > hi:
            raise CodecError(f"{field}.low[{i}]", f"{lo} is above high[{i}] = {hi}")


def check_capabilities(caps: pb.Capabilities, field: str = "hello.resource.capabilities") -> None:
    # The embodiment names the store's dataset and is the default policy name: it must be both.
    check_policy_name(caps.embodiment, f"{field}.embodiment")
    if not 0 < caps.control_hz <= MAX_CONTROL_HZ:  # NaN fails this too
        raise CodecError(f"{field}.control_hz", f"must be in (0, {MAX_CONTROL_HZ:g}], got {caps.control_hz}")
    check_count(caps.observation, MAX_OBSERVATIONS, f"{field}.observation", "observations")
    check_spec(caps.action, f"{field}.action", name_pattern=None)
    seen: set[str] = set()
    for i, spec in enumerate(caps.observation):
        check_spec(spec, f"{field}.observation[{i}]")
        if spec.name in seen:
            raise CodecError(f"{field}.observation[{i}].name", f"duplicate observation {spec.name!r}")
        seen.add(spec.name)
    check_count(caps.cameras, MAX_CAMERAS, f"{field}.cameras", "cameras")
    for i, camera in enumerate(caps.cameras):
        check_id(camera, f"{field}.cameras[{i}]")


def check_hello(hello: pb.Hello) -> None:
    """Bounds of a Hello besides its resource (checked by the gateway's check_resource) and credential value."""
    check_size(hello, MAX_HELLO_BYTES, "hello")
    check_count(hello.token, MAX_TOKEN_LENGTH, "hello.token", "characters")
    if hello.policy_name:
        check_policy_name(hello.policy_name, "hello.policy_name")
    if hello.policy_version < 0:
        raise CodecError("hello.policy_version", f"must be >= 0, got {hello.policy_version}")
    if hello.outcome_policy:
        check_policy_name(hello.outcome_policy, "hello.outcome_policy")
    if hello.outcome_version < 0 or (hello.outcome_version and not hello.outcome_policy):
        why = "must be >= 0" if hello.outcome_version < 0 else "must be 0 without an outcome_policy"
        raise CodecError("hello.outcome_version", f"{why}, got {hello.outcome_version}")
    check_count(hello.held, MAX_HELD_EPISODES, "hello.held", "episodes")
    for i, progress in enumerate(hello.held):
        check_id(progress.episode_id, f"hello.held[{i}].episode_id")
        if progress.next_seq < 0:
            raise CodecError(f"hello.held[{i}].next_seq", f"must be >= 0, got {progress.next_seq}")


def check_applied(applied: pb.PolicyApplied) -> None:
    check_size(applied, MAX_CONTROL_MESSAGE_BYTES, "applied")
    check_policy_name(applied.policy_name, "applied.policy_name")
    if applied.version < 1:
        raise CodecError("applied.version", f"must be >= 1, got {applied.version}")


def check_rejected(rejected: pb.PolicyRejected) -> None:
    check_size(rejected, MAX_CONTROL_MESSAGE_BYTES, "rejected")
    check_policy_name(rejected.policy_name, "rejected.policy_name")
    if rejected.version < 1:
        raise CodecError("rejected.version", f"must be >= 1, got {rejected.version}")


def check_heartbeat(heartbeat: pb.Heartbeat) -> None:
    check_size(heartbeat, MAX_CONTROL_MESSAGE_BYTES, "heartbeat")
    if heartbeat.state not in EDGE_STATES:
        raise CodecError("heartbeat.state", f"must be one of {list(EDGE_STATES)}, got {quoted(heartbeat.state)}")
    for name in ("backlog_steps", "backlog_bytes"):
        if getattr(heartbeat, name) < 0:
            raise CodecError(f"heartbeat.{name}", f"must be >= 0, got {getattr(heartbeat, name)}")
    if not (math.isfinite(heartbeat.backlog_oldest_s) and heartbeat.backlog_oldest_s >= 0):
        raise CodecError("heartbeat.backlog_oldest_s", f"must be a finite age >= 0, got {heartbeat.backlog_oldest_s}")
