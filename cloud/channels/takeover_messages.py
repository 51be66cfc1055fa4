"""The takeover page's wire format (JSON over its websocket, docs/takeover-protocol.md): the checks that turn a
page's messages into a person's commands for the tunnel, refusing anything else with a ``PhoneError`` (the page
server's refusal, whichever page it serves) that names the field; and the robot's views and refusals as JSON."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cloud.channels.phone_messages import PhoneError, is_number, json_object
from cloud.gateway.sessions import Session
from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError, decode_array
from protocol.person import MAX_COMMAND_BYTES, MAX_IMAGE_SIDE, MAX_VIEW_RATE_HZ, check_person_command

WHO_PREFIX = "browser:"  # a page's person is recorded as browser:<operator id>
MAX_SEQ = 2**53  # a JavaScript number counts exactly up to here
DEFAULT_RATE_HZ = 5.0
DEFAULT_IMAGE_SIDE = 160
MAX_HELLO_BYTES = 4096


def _bounded(raw: str | bytes, limit: int, what: str) -> str | bytes:
    """Refuses a message past ``limit`` bytes before it is parsed."""
    if len(raw) > limit:
        raise PhoneError(what, f"{len(raw)} bytes, at most {limit}")
    return raw


@dataclass(frozen=True)
class TakeoverHello:
    operator: str  # the operator's device id (`fleetloop devices add NAME --kind operator`)
    token: str
    rate_hz: float  # live views a second this page wants
    image_side: int  # camera images at most this many pixels a side


def parse_takeover_hello(raw: str | bytes) -> TakeoverHello:
    hello = json_object(_bounded(raw, MAX_HELLO_BYTES, "hello"), "hello")
    if hello.get("type") != "hello":
        raise PhoneError("type", "the first message must be a hello")
    operator, token = hello.get("operator"), hello.get("token")
    if not isinstance(operator, str) or not operator:
        raise PhoneError("hello.operator", "must be the operator's id (fleetloop devices add NAME --kind operator)")
    if not isinstance(token, str) or not token:
        raise PhoneError("hello.token", "must be the operator's credential (flt_...)")
    rate = hello.get("rate_hz", DEFAULT_RATE_HZ)
    if not is_number(rate) or not 0.2 <= rate <= MAX_VIEW_RATE_HZ:
        raise PhoneError("hello.rate_hz", f"must be a number in 0.2..{MAX_VIEW_RATE_HZ:g}, got {rate!r}")
    side = hello.get("image_side", DEFAULT_IMAGE_SIDE)
    if not isinstance(side, int) or isinstance(side, bool) or not 16 <= side <= MAX_IMAGE_SIDE:
        raise PhoneError("hello.image_side", f"must be an integer in 16..{MAX_IMAGE_SIDE}, got {side!r}")
    return TakeoverHello(operator, token, float(rate), side)


def parse_command(raw: str | bytes, who: str, session_id: str, action_dim: int | None) -> pb.PersonCommand:
    """A page's ``command`` (``seq``, optional ``signals`` and ``action``) as the tunnel's PersonCommand."""
    message = json_object(_bounded(raw, MAX_COMMAND_BYTES, "command"), "command")
    if message.get("type") != "command":
        raise PhoneError("type", f"must be command, got {str(message.get('type'))[:40]!r}")
    seq = message.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        raise PhoneError("command.seq", f"must be an integer in 1..{MAX_SEQ}, rising, got {seq!r}")
    signals = message.get("signals", [])
    if not isinstance(signals, list) or not all(isinstance(s, str) for s in signals):
        raise PhoneError("command.signals", "must be a list of signal names")
    action = message.get("action", [])
    if not isinstance(action, list) or not all(is_number(v) for v in action):
        raise PhoneError("command.action", "must be a list of finite numbers")
    command = pb.PersonCommand(who=who, session=session_id, seq=seq, signals=signals, action=action)
    try:
        check_person_command(command, action_dim)
    except CodecError as err:
        raise PhoneError(err.field.replace("person.", "command.", 1), err.message) from None
    return command


def robot_info(session: Session) -> dict:
    """What a page needs to drive the robot: its action's shape and limits, rate, cameras and policy."""
    caps = session.resource.capabilities
    return {
        "type": "robot",
        "robot": session.resource.id,
        "connected": True,
        "embodiment": caps.embodiment,
        "policy": session.policy_name,
        "control_hz": caps.control_hz,
        "cameras": list(caps.cameras),
        "action": {"shape": list(caps.action.shape), "low": list(caps.action.low), "high": list(caps.action.high)},
    }


def _values(array: pb.Array) -> list:
    return decode_array(array, "live_view").astype(float).reshape(-1).round(5).tolist()


def view_json(view: pb.LiveView) -> str:
    """A live view (already checked by the gateway) as the page reads it."""
    return json.dumps(
        {
            "type": "view",
            "episode": view.episode,
            "step": view.step,
            "state": {name: _values(array) for name, array in view.state.items()},
            "frames": [
                {
                    "camera": f.camera,
                    "width": f.width,
                    "height": f.height,
                    "jpeg": base64.b64encode(f.data).decode(),
                }
                for f in view.frames
            ],
            "intended": _values(view.intended) if view.HasField("intended") else None,
            "intended_step": view.intended_step,
            "applied": _values(view.applied) if view.HasField("applied") else None,
            "controller": view.controller,
            "note": view.note,
            "policy_version": view.policy_version,
            "command_seq": view.command_seq,
            "mono_ns": view.mono_ns,
        }
    )
