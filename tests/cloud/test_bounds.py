"""The gateway's stream counter: streams in all, before their hello, and per device; every refusal names its limit
and a closed stream gives its place back."""

from __future__ import annotations

import pytest

from cloud.gateway.bounds import LimitError, StreamLimits


def test_streams_are_counted_in_all_before_their_hello_and_per_device() -> None:
    limits = StreamLimits(max_streams=4, max_pending_hellos=2, max_per_device=2)
    first, second = limits.open(), limits.open()
    with pytest.raises(LimitError) as refused:
        limits.open()
    assert refused.value.field == "hello" and "max_pending_hellos" in refused.value.message
    first.admit("robot-1")
    second.admit("robot-1")  # a reconnect beside the stream it supersedes
    third = limits.open()
    with pytest.raises(LimitError) as refused:
        third.admit("robot-1")
    assert refused.value.field == "hello.resource.id" and "max_streams_per_device" in refused.value.message
    third.admit("robot-2")
    limits.open()
    with pytest.raises(LimitError) as refused:
        limits.open()
    assert refused.value.field == "connect" and "max_streams" in refused.value.message
    assert limits.refused == 3
    first.close()
    first.close()  # closing twice gives back one place only
    assert limits.open_streams == 3 and limits.per_device == {"robot-1": 1, "robot-2": 1}
    with second, third:
        pass
    assert limits.open_streams == 1 and limits.pending == 1 and not limits.per_device


def test_a_stream_refused_at_its_hello_leaves_no_count_behind() -> None:
    limits = StreamLimits(max_streams=2, max_pending_hellos=2, max_per_device=1)
    with limits.open() as admitted:
        admitted.admit("robot-1")
        with limits.open() as refused, pytest.raises(LimitError):
            refused.admit("robot-1")
    assert limits.open_streams == 0 and limits.pending == 0 and not limits.per_device
