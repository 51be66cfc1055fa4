"""Remote inference for openpi clients: a websocket server that speaks openpi's policy-server protocol.

openpi (Physical Intelligence) drives robots through ``openpi_client.WebsocketClientPolicy``; this server answers
it with fleetloop policies, so an existing openpi client needs only the address. The protocol, as openpi's
``websocket_policy_server.py`` and ``msgpack_numpy.py`` define it:

- Every message is a binary msgpack frame. numpy arrays travel as maps ``{b"__ndarray__": True, b"data": raw
  bytes, b"dtype": dtype.str, b"shape": [...]}``, numpy scalars as ``{b"__npgeneric__": True, b"data": item,
  b"dtype": dtype.str}``. Never pickle: object, void and complex dtypes are refused.
- Right after the websocket opens the server sends its metadata (a map the client keeps as opaque).
- Then, per observation map received, one reply map holding ``"actions"`` (chunk, action_dim) float32 and
  ``"server_timing"`` {"infer_ms", "prev_total_ms"}; fleetloop adds ``"policy_version"`` and ``"batch_size"``.
- An error is a text frame with the message, then a close with code 1011 (the openpi client raises on text).
  ``GET /healthz`` answers 200.

Which policy a connection drives: the path or a query parameter (``ws://host:port/pusht`` or
``ws://host:port/?policy=pusht``), else the server's default policy. Requests go through the cloud's shared
``InferenceServer``, so openpi clients and tunnel edges that run the same policy share batched forward passes.
Observation keys are mapped to the policy's observation names (see ``map_observation`` and docs/openpi.md).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import math
import os
import ssl
import tempfile
import time
import weakref
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgpack
import numpy as np
from pydantic import Field
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from cloud.data.version_registry import POLICY_NAME, PolicyRegistry
from cloud.security.devices import Device, DeviceRegistry
from cloud.security.revocation import CredentialWatch
from cloud.serving.inference import InferenceJob, InferenceServer
from hal.config import CodeConfig, Name
from policies.signing import NOT_SIGNED, UnsignedVersion
from protocol.incidents import internal_error
from protocol.sanitize import printable

log = logging.getLogger("fleetloop.openpi")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
ALLOWED_KINDS = "biufUS"  # bool, ints, floats, strings; never object (pickle), void (structs) or complex
MAX_NDIM = 32
OBSERVATION_PREFIXES = ("observation/", "observation.", "obs/", "obs.")
IGNORED_KEYS = ("prompt",)  # openpi's language instruction; fleetloop policies take their task from their config


class OpenPiError(ValueError):
    """A message the server refuses; ``field`` names the offending part of it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ---- msgpack with numpy arrays, as openpi packs them ---------------------------------------------------------------


def _get(obj: dict, key: str) -> Any:
    """A field of an array map: openpi's Python packer writes bytes keys; other packers may write strings."""
    return obj[key.encode()] if key.encode() in obj else obj.get(key)


def _dtype(value: Any) -> np.dtype:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise OpenPiError("dtype", f"must be a numpy dtype string such as '<f4', got {type(value).__name__}")
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError) as err:
        raise OpenPiError("dtype", f"{value!r} is not a numpy dtype ({err})") from err
    if dtype.kind not in ALLOWED_KINDS or dtype.itemsize == 0:
        raise OpenPiError("dtype", f"{value!r} is refused: only bool, integer, float and string arrays travel")
    return dtype


def _decode(obj: dict) -> Any:
    """msgpack object hook: openpi's array and scalar maps back to numpy; every other map unchanged."""
    if _get(obj, "__ndarray__"):
        dtype = _dtype(_get(obj, "dtype"))
        shape, data = _get(obj, "shape"), _get(obj, "data")
        if not isinstance(shape, list | tuple) or len(shape) > MAX_NDIM:
            raise OpenPiError("shape", f"must be a list of at most {MAX_NDIM} sizes, got {shape!r}")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise OpenPiError("shape", f"sizes must be non-negative integers, got {list(shape)}")
        if not isinstance(data, bytes):
            raise OpenPiError("data", f"must be raw bytes, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise OpenPiError("data", f"holds {len(data)} bytes; shape {list(shape)} of {dtype.str} needs {expected}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if _get(obj, "__npgeneric__"):
        dtype = _dtype(_get(obj, "dtype"))
        try:
            return dtype.type(_get(obj, "data"))
        except (TypeError, ValueError, OverflowError) as err:
            raise OpenPiError("data", f"is not a {dtype.str} scalar: {err}") from err
    return obj


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind not in ALLOWED_KINDS:
        raise TypeError(f"dtype {obj.dtype} does not travel")
    if isinstance(obj, np.ndarray):
        obj = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot pack {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decodes one message; OpenPiError (naming the field) on anything malformed or refused."""
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=True)
    except OpenPiError as err:
        raise OpenPiError(f"message.{err.field}", err.message) from err
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise OpenPiError("message", f"not a msgpack map: {err}") from err


# ---- what a policy takes in, and how openpi's keys map to it -------------------------------------------------------


@dataclass(frozen=True)
class PolicySignature:
    name: str
    version: int
    observation: dict[str, dict[str, Any]]  # name -> {"shape": [...], "dtype": "..."}
    action_dim: int
    chunk_size: int

    def metadata(self) -> dict[str, Any]:
        return {
            "server": "fleetloop",
            "policy_name": self.name,
            "policy_version": self.version,
            "observation": self.observation,
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
        }


def signature_from_config(name: str, version: int, config: dict[str, Any]) -> PolicySignature:
    """The observation spec, action_dim and chunk_size of a policy config (a LoRA wrapper holds its base's)."""
    while "observation" not in config and isinstance(config.get("base_config"), dict):
        config = config["base_config"]
    observation = config.get("observation")
    if not isinstance(observation, dict) or not observation:
        raise OpenPiError("policy", f"{name} v{version} does not declare its observation")
    spec = {k: {"shape": [int(n) for n in v["shape"]], "dtype": str(v["dtype"])} for k, v in observation.items()}
    return PolicySignature(name, version, spec, int(config.get("action_dim", 0)), int(config.get("chunk_size", 1)))


def _flatten(message: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in message.items():
        if not isinstance(key, str):
            raise OpenPiError(f"observation[{prefix}{key!r}]", "keys must be strings")
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _policy_name_for(key: str, names: set[str]) -> str | None:
    candidates = [key] + [key[len(p) :] for p in OBSERVATION_PREFIXES if key.startswith(p)]
    for candidate in candidates:
        for form in (candidate, candidate.replace("/", ".")):
            if form in names:
                return form
    return None


def map_observation(message: Any, signature: PolicySignature) -> dict[str, np.ndarray]:
    """An openpi observation map -> the policy's observation, validated; OpenPiError names the client's key.

    Nested maps are flattened with "/" ({"observation": {"state": x}} -> "observation/state"). A key matches the
    policy's observation name ``state`` as ``state``, ``observation/state``, ``observation.state``, ``obs/state``
    or ``obs.state``; "/" inside a name also matches "." (``images/top`` -> ``images.top``). ``prompt`` is
    ignored; any other key is refused. Float inputs are cast from any int or float dtype; other dtypes must match.
    """
    if not isinstance(message, dict):
        raise OpenPiError("observation", f"must be a map of arrays, got {type(message).__name__}")
    names = set(signature.observation)
    observation: dict[str, np.ndarray] = {}
    sent_as: dict[str, str] = {}
    for key, value in _flatten(message).items():
        if key in IGNORED_KEYS:
            continue
        name = _policy_name_for(key, names)
        if name is None:
            raise OpenPiError(key, f"is not an input of {signature.name}; it takes {sorted(names)}")
        if name in sent_as:
            raise OpenPiError(key, f"names the same input {name!r} as {sent_as[name]!r}")
        sent_as[name] = key
        observation[name] = _check_input(key, name, value, signature.observation[name])
    missing = sorted(names - set(observation))
    if missing:
        raise OpenPiError(missing[0], f"is missing; {signature.name} takes {sorted(names)}")
    return observation


def _check_input(key: str, name: str, value: Any, spec: dict[str, Any]) -> np.ndarray:
    field = key if key == name else f"{key} (input {name!r})"
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
    elif isinstance(value, int | float | list) and not isinstance(value, bool):
        try:
            array = np.asarray(value)
        except ValueError as err:
            raise OpenPiError(field, f"is not a rectangular array of numbers: {err}") from err
    else:
        raise OpenPiError(field, f"must be a numpy array, got {type(value).__name__}")
    dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
    if array.dtype != dtype:
        if dtype.kind == "f" and array.dtype.kind in "iuf":
            array = array.astype(dtype)
        else:
            raise OpenPiError(field, f"dtype must be {dtype.name}, got {array.dtype.name}")
    if array.shape != shape:
        raise OpenPiError(field, f"shape must be {list(shape)}, got {list(array.shape)}")
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise OpenPiError(field, "contains NaN or infinity")
    return array


# ---- the server ----------------------------------------------------------------------------------------------------


def ssl_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server TLS context from PEM bytes (the gateway's certificate), for wss://."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        for path, data in ((cert, cert_pem), (key, key_pem)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as file:
                file.write(data)
        context.load_cert_chain(cert, key)
    return context


class OpenPiConfig(CodeConfig):
    """Where the openpi channel listens and what it accepts."""

    config_name = "openpi"

    host: Name = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0: any free port (logged at start)
    default_policy: str = ""  # the policy of a client that names none ("": every client must name one)
    max_message_bytes: Annotated[int, Field(ge=1024)] = DEFAULT_MAX_MESSAGE_BYTES
    reply_timeout_s: Annotated[float, Field(gt=0)] = 30.0


class OpenPiServer:
    """openpi's websocket policy-server protocol in front of the shared InferenceServer; any number of clients."""

    def __init__(
        self,
        inference: InferenceServer,
        registry: PolicyRegistry,
        config: OpenPiConfig,
        devices: DeviceRegistry | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.inference = inference
        self.registry = registry
        self.config = config
        self.port = self.config.port  # the bound port once started
        self.devices = devices
        self.ssl_context = ssl_context
        self.requests = 0
        self.errors = 0
        self._server: Server | None = None
        self._pending: set[asyncio.Future] = set()
        self._signatures: dict[tuple[str, int], PolicySignature] = {}
        # Each connection's device, from its handshake to its handler; a revoked one's connection closes within 0.1 s.
        self._device_of: weakref.WeakKeyDictionary[ServerConnection, Device] = weakref.WeakKeyDictionary()
        self._revocations = CredentialWatch(devices) if devices is not None else None

    async def start(self) -> int:
        self._server = await serve(
            self._handle,
            self.config.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            max_size=self.config.max_message_bytes,
            ssl=self.ssl_context,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "openpi policy server on %s://%s:%d (default policy %s, %s)",
            "wss" if self.ssl_context else "ws",
            self.config.host,
            self.port,
            self.config.default_policy or "none: clients name one",
            "device credentials required" if self._checks_credentials() else "no credentials checked",
        )
        return self.port

    async def stop(self) -> None:
        for future in self._pending:  # a request whose pass will never come back (the cloud is stopping)
            if not future.done():
                future.set_result((None, 0, "the cloud is shutting down", 0))
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        log.info("openpi policy server answered %d request(s), refused %d", self.requests, self.errors)

    def _checks_credentials(self) -> bool:
        return self.devices is not None and self.devices.enabled

    def policy_from_path(self, path: str) -> str:
        """``/name`` or ``/?policy=name`` (the query wins), else the default; OpenPiError when none or invalid."""
        parts = urlsplit(path)
        name = (
            parse_qs(parts.query).get("policy", [""])[0] or unquote(parts.path.strip("/")) or self.config.default_policy
        )
        if not name:
            raise OpenPiError("policy", "name one: ws://host:port/<policy> or ws://host:port/?policy=<policy>")
        if not POLICY_NAME.fullmatch(name):
            raise OpenPiError("policy", f"{name!r} must be 1-64 letters, digits, '_', '.', '-'")
        return name

    async def signature(self, policy_name: str) -> PolicySignature:
        latest = await asyncio.to_thread(self.registry.latest, policy_name)
        if latest is None:
            raise OpenPiError("policy", f"no version of {policy_name} is published yet")
        key = (policy_name, latest.version)
        if key not in self._signatures:
            try:  # the learner's signature first: a file anyone else wrote is never parsed further
                _, metadata = await asyncio.to_thread(self.registry.verified_header, policy_name, latest.version)
                config = json.loads(metadata["config"])
            except UnsignedVersion as err:
                log.error("openpi: %s", err)
                raise OpenPiError("policy", f"{policy_name} v{latest.version}: {NOT_SIGNED}") from err
            except (ValueError, KeyError, TypeError) as err:  # the registry's file: its details stay in this log
                log.error("%s v%d has no readable config: %s", policy_name, latest.version, err)
                raise OpenPiError("policy", f"{policy_name} v{latest.version} has no readable config") from err
            self._signatures[key] = signature_from_config(policy_name, latest.version, config)
        return self._signatures[key]

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        try:
            policy_name = self.policy_from_path(request.path)
        except OpenPiError as err:
            return connection.respond(http.HTTPStatus.BAD_REQUEST, f"{err}\n")
        if self._checks_credentials():
            assert self.devices is not None
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            device = self.devices.identify(token.strip()) if scheme.lower() == "api-key" and token.strip() else None
            if device is None:
                log.warning("openpi connection from %s refused: no valid device credential", connection.remote_address)
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED, "Authorization: Api-Key <device token> is missing or not valid\n"
                )
            if device.kind != "robot":  # a phone's or an operator's credential drives no robot
                log.warning(
                    "openpi connection of %s refused: a %s's credential is not a robot's", device.id, device.kind
                )
                return connection.respond(http.HTTPStatus.FORBIDDEN, "openpi takes a robot's credential only\n")
            if not device.may_run(policy_name):
                return connection.respond(http.HTTPStatus.FORBIDDEN, f"{device.id} may not run {policy_name}\n")
            self._device_of[connection] = device
        try:
            await self.signature(policy_name)
        except OpenPiError as err:
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"{err}\n")
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        assert websocket.request is not None
        policy_name = self.policy_from_path(websocket.request.path)
        peer = websocket.remote_address
        device, watch, held = self._device_of.pop(websocket, None), self._revocations, None
        if device is not None and watch is not None:  # a revocation closes it: the reason, then 1008
            revoked = (CloseCode.POLICY_VIOLATION, "hello.token: revoked")
            held = watch.hold(device, "openpi connection", lambda why: self._fail(websocket, why, *revoked))
        try:
            await websocket.send(packb((await self.signature(policy_name)).metadata()))
            log.info("openpi client %s drives %s", peer, policy_name)
            prev_total_s = None
            while True:
                message = await websocket.recv()
                start = time.monotonic()
                if isinstance(message, str):
                    raise OpenPiError("message", "must be a binary msgpack frame, got text")
                signature = await self.signature(policy_name)  # the newest version's inputs
                observation = map_observation(unpackb(message), signature)
                infer_start = time.monotonic()
                actions, version, batch_size = await self._infer(policy_name, observation)
                timing = {"infer_ms": (time.monotonic() - infer_start) * 1000}
                if prev_total_s is not None:
                    timing["prev_total_ms"] = prev_total_s * 1000
                reply = {"actions": actions, "policy_version": version, "batch_size": batch_size}
                await websocket.send(packb({**reply, "server_timing": timing}))
                self.requests += 1
                prev_total_s = time.monotonic() - start
        except ConnectionClosed:
            log.info("openpi client %s closed", peer)
        except OpenPiError as err:
            self.errors += 1
            log.warning("openpi client %s refused: %s", peer, printable(str(err), 500))  # it holds the client's keys
            await self._fail(websocket, str(err))
        except Exception:  # never takes the server down; the client hears an incident id, the log the details
            self.errors += 1
            await self._fail(websocket, internal_error(log, f"openpi client {peer} driving {policy_name}"))
        finally:
            if watch is not None and held is not None:
                watch.release(held)

    async def _infer(self, policy_name: str, observation: dict[str, np.ndarray]) -> tuple[np.ndarray, int, int]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()

        def reply(actions: np.ndarray | None, version: int, error: str, batch_size: int) -> None:
            if not future.done():
                future.set_result((actions, version, error, batch_size))

        self._pending.add(future)
        try:
            self.inference.submit(policy_name, InferenceJob(observation, reply))
            actions, version, error, batch_size = await asyncio.wait_for(future, timeout=self.config.reply_timeout_s)
        except TimeoutError:
            raise OpenPiError(
                "policy", f"no answer from {policy_name} within {self.config.reply_timeout_s:g} s"
            ) from None
        finally:
            self._pending.discard(future)
        if actions is None:
            raise OpenPiError("policy", error or "no actions")
        return np.asarray(actions, dtype=np.float32), version, batch_size

    @staticmethod
    async def _fail(
        websocket: ServerConnection,
        text: str,
        code: CloseCode = CloseCode.INTERNAL_ERROR,
        reason: str = "error: see the previous text frame",
    ) -> None:
        """openpi's error report: the message as a text frame, then a close (1011; 1008 for a revoked credential)."""
        try:
            await websocket.send(text)
            await websocket.close(code, reason)
        except ConnectionClosed:
            pass
