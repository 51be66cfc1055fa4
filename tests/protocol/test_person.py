"""The checks on a takeover page's messages at both ends: every bad field is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError, encode_array
from protocol.person import (
    MAX_FRAMES,
    check_live_view,
    check_person_command,
    check_person_refused,
    check_watch,
)


def command(**fields) -> pb.PersonCommand:
    return pb.PersonCommand(**{"who": "browser:alice", "session": "s1", "seq": 1, **fields})


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"who": ""}, "person.who"),
        ({"who": "a\x00b"}, "person.who"),
        ({"session": "x" * 200}, "person.session"),
        ({"seq": 0}, "person.seq"),
        ({"signals": ["take_over", "sudo"]}, "person.signals[1]"),
        ({"signals": ["success"] * 9}, "person.signals"),
        ({"action": [0.1, float("nan"), 0, 1]}, "person.action[1]"),
        ({"action": [0.1, 0.2]}, "person.action"),
        ({"action": [0.0] * 5000}, "person.action"),
    ],
)
def test_a_bad_person_command_is_refused_by_field(fields, field) -> None:
    with pytest.raises(CodecError) as err:
        check_person_command(command(**fields), action_dim=4)
    assert err.value.field == field


def test_a_good_person_command_passes() -> None:
    check_person_command(command(signals=["take_over"], action=[1, 0, -1, 2]), action_dim=4)
    check_person_command(command(left=True), action_dim=4)  # no action: a page that closed


def view(**fields) -> pb.LiveView:
    message = pb.LiveView(step=3, controller="browser:alice", **fields)
    message.state["state"].CopyFrom(encode_array(np.zeros(21, np.float32)))
    return message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda v: v.state["state"].CopyFrom(encode_array(np.array([np.inf], np.float32))),
            "live_view.state[state].data",
        ),
        (
            lambda v: v.frames.add(camera="top", format="png", data=b"x", width=8, height=8),
            "live_view.frames[0].format",
        ),
        (lambda v: v.frames.add(camera="top", format="jpeg", data=b"", width=8, height=8), "live_view.frames[0].data"),
        (
            lambda v: v.frames.add(camera="top", format="jpeg", data=b"x", width=0, height=8),
            "live_view.frames[0].width",
        ),
        (lambda v: v.intended.CopyFrom(encode_array(np.array([np.nan], np.float32))), "live_view.intended.data"),
        (lambda v: setattr(v, "step", -1), "live_view.step"),
        (lambda v: setattr(v, "note", "x" * 301), "live_view.note"),
        (lambda v: setattr(v, "controller", "\n"), "live_view.controller"),
    ],
)
def test_a_bad_live_view_is_refused_by_field(change, field) -> None:
    message = view()
    change(message)
    with pytest.raises(CodecError) as err:
        check_live_view(message)
    assert err.value.field == field


def test_too_many_frames_and_a_good_view() -> None:
    message = view()
    for _ in range(MAX_FRAMES + 1):
        message.frames.add(camera="top", format="jpeg", data=b"\xff\xd8", width=8, height=8)
    with pytest.raises(CodecError, match="live_view.frames"):
        check_live_view(message)
    del message.frames[1:]
    check_live_view(message)


def test_watch_and_refused_checks() -> None:
    check_watch(pb.WatchRequest())  # nobody watches: no rate needed
    check_watch(pb.WatchRequest(watchers=2, rate_hz=5, max_image_side=160))
    for bad, field in (
        (pb.WatchRequest(watchers=1, rate_hz=0, max_image_side=160), "watch.rate_hz"),
        (pb.WatchRequest(watchers=1, rate_hz=float("nan"), max_image_side=160), "watch.rate_hz"),
        (pb.WatchRequest(watchers=1, rate_hz=5, max_image_side=4), "watch.max_image_side"),
        (pb.WatchRequest(watchers=-1), "watch.watchers"),
    ):
        with pytest.raises(CodecError) as err:
            check_watch(bad)
        assert err.value.field == field
    check_person_refused(pb.PersonRefused(who="browser:bob", session="s2", seq=4, reason="alice drives"))
    with pytest.raises(CodecError, match="person_refused.reason"):
        check_person_refused(pb.PersonRefused(who="browser:bob", session="s2", seq=4, reason="\x07"))
