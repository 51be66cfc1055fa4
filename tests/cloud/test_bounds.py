"""The gateway's stream counter: streams in all, before their hello, and per device; every refusal names its limit
and a closed stream gives its place back."""

from __future__ import annotations

import logging

import pytest

from cloud.gateway.bounds import LimitError, StreamLimits, peer_host


def test_streams_are_counted_in_all_before_their_hello_and_per_device() -> None:
    limits = StreamLimits(max_streams=4, max_pending_hellos=2, max_per_device=2)
    first, second = limits.open(), limits.open()
    first.hear()
    second.hear()
    with pytest.raises(LimitError) as refused:  # both are being read: neither is closed to make room
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


def test_past_the_pending_limit_the_oldest_silent_stream_of_the_busiest_host_makes_room(caplog) -> None:
    limits = StreamLimits(max_streams=10, max_pending_hellos=3, max_per_device=1)
    robot = limits.open("ipv4:10.0.0.1:1000")
    first, second = limits.open("ipv4:10.0.0.9:2000"), limits.open("ipv4:10.0.0.9:2001")
    with caplog.at_level(logging.WARNING, "fleetloop.gateway"):
        late = limits.open("ipv4:10.0.0.2:3000")  # 10.0.0.9 holds two: its oldest goes, not the older robot's
        assert first.evicted.is_set() and not robot.evicted.is_set()
        assert limits.pending == 3 and limits.evicted == 1 and limits.refused == 0
        second.hear()  # its hello is being read: it stays
        newest = limits.open("ipv4:10.0.0.3:1")  # every silent host holds one now: the oldest, the robot's, goes
        assert robot.evicted.is_set() and not second.evicted.is_set() and not late.evicted.is_set()
    (line,) = [r.getMessage() for r in caplog.records]  # two evictions, one line (rate-limited)
    assert "closed 1 connection(s)" in line and "10.0.0.9" in line and "max_pending_hellos" in line
    with pytest.raises(LimitError) as refused:  # its hello arrived too late: its place went to another
        robot.admit("robot-1")
    assert refused.value.field == "hello"
    second.admit("robot-2")
    for slot in (robot, first, second, late, newest):
        slot.close()
    assert limits.open_streams == 0 and limits.pending == 0 and not limits.per_device


def test_peers_are_grouped_by_host_and_ipv6_by_its_64() -> None:
    assert peer_host("ipv4:10.0.0.5:41234") == "10.0.0.5"
    assert peer_host("ipv6:[2001:db8::1]:443") == peer_host("ipv6:[2001:db8::ffff:2]:80") == "2001:db8::/64"
    assert peer_host("unix:/tmp/gateway.sock") == "unix:/tmp/gateway.sock"
    assert peer_host("") == ""
