"""The openpi-compatible endpoint, driven by a client written from openpi's documented protocol.

The client below follows openpi_client (packages/openpi-client/src/openpi_client/msgpack_numpy.py and
websocket_client_policy.py) and deliberately does not import fleetloop's packer: arrays are maps with the bytes
keys __ndarray__, data, dtype (dtype.str) and shape; the server's metadata comes first; a text frame is an error.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from cloud.channels.openpi_server import OpenPiConfig, OpenPiServer
from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.version_registry import PolicyRegistry
from cloud.security.devices import DeviceRegistry
from cloud.serving.inference import InferenceServer
from policies.factory import make_policy
from policies.weights import policy_to_bytes

# openpi's client calls websockets.sync.client.connect() without a with-block; websockets 17 warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

CONFIG = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "chunk_size": 4, "hidden": [8]}


# ---- openpi's msgpack_numpy, as documented ------------------------------------------------------------------------


def openpi_pack_array(obj):
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"Unsupported dtype: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def openpi_unpack_array(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


openpi_packb = functools.partial(msgpack.packb, default=openpi_pack_array)
openpi_unpackb = functools.partial(msgpack.unpackb, object_hook=openpi_unpack_array)


def openpi_connect(uri: str) -> tuple[ClientConnection, dict]:
    """WebsocketClientPolicy._wait_for_server: connect without compression or size limit, read the metadata."""
    conn = connect(uri, compression=None, max_size=None, open_timeout=5)
    return conn, openpi_unpackb(conn.recv(timeout=5))


def openpi_infer(conn: ClientConnection, obs: dict) -> dict:
    """WebsocketClientPolicy.infer: a text reply is the server's error."""
    conn.send(openpi_packb(obs))
    response = conn.recv(timeout=10)
    if isinstance(response, str):
        raise RuntimeError(f"Error in inference server:\n{response}")
    return openpi_unpackb(response)


# ---- a real cloud-side server on loopback ---------------------------------------------------------------------------


class RunningServer:
    def __init__(
        self, registry: PolicyRegistry, default_policy: str, max_message_bytes: int = 1 << 20, devices=None
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.inference: InferenceServer
        self.server: OpenPiServer

        async def start() -> int:
            self.inference = InferenceServer(registry)
            self.server = OpenPiServer(
                self.inference,
                registry,
                OpenPiConfig(default_policy=default_policy, max_message_bytes=max_message_bytes),
                devices=devices,
            )
            return await self.server.start()

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)

    def stop(self) -> None:
        async def stop() -> None:
            await self.server.stop()
            await self.inference.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def cloud(tmp_path) -> Iterator[tuple[RunningServer, object]]:
    registry = signing_registry(DataLayout(tmp_path))
    policy = make_policy("mlp", CONFIG)
    registry.publish("pusht", policy_to_bytes(policy))
    running = RunningServer(registry, default_policy="pusht")
    try:
        yield running, policy
    finally:
        running.stop()


def test_an_openpi_client_gets_metadata_first_then_an_action_chunk_per_observation(cloud) -> None:
    running, policy = cloud
    state = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    expected = policy.act({"state": state})
    conn, metadata = openpi_connect(f"ws://127.0.0.1:{running.port}")
    with conn:
        assert metadata["policy_name"] == "pusht" and metadata["policy_version"] == 1
        assert metadata["observation"] == {"state": {"shape": [3], "dtype": "float32"}}
        assert (metadata["action_dim"], metadata["chunk_size"]) == (2, 4)

        # openpi's usual flat keys with a prompt, a nested map, and the plain name (float64, as numpy makes it)
        for obs in (
            {"observation/state": state, "prompt": "push the T into place"},
            {"observation": {"state": state}},
            {"state": state.astype(np.float64)},
        ):
            result = openpi_infer(conn, obs)
            actions = result["actions"]
            assert actions.dtype == np.float32 and actions.shape == (4, 2)
            np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-6)
            assert result["policy_version"] == 1
            assert result["server_timing"]["infer_ms"] > 0
        assert "prev_total_ms" in result["server_timing"]  # as openpi: the previous request's round trip

    # by path and by query parameter, the same policy
    for path in ("/pusht", "/?policy=pusht"):
        conn, metadata = openpi_connect(f"ws://127.0.0.1:{running.port}{path}")
        with conn:
            assert metadata["policy_name"] == "pusht"
            np.testing.assert_allclose(openpi_infer(conn, {"state": state})["actions"], expected, rtol=1e-5, atol=1e-6)
    assert running.inference.stats.requests == 5  # every request went through the cloud's shared InferenceServer


def test_a_bad_observation_gets_an_error_naming_the_field_and_harms_no_one_else(cloud) -> None:
    running, policy = cloud
    state = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    bystander, _ = openpi_connect(f"ws://127.0.0.1:{running.port}")
    bad_cases = [
        ({"observation/state": np.zeros(4, np.float32)}, ["observation/state", "shape must be [3], got [4]"]),
        ({"observation/wrist": state}, ["observation/wrist", "not an input of pusht"]),
        ({"prompt": "hello"}, ["state", "is missing"]),
        ({"state": np.array([1.0, np.nan, 0.0], np.float32)}, ["state", "NaN"]),
        ({"state": np.array(["a", "b", "c"])}, ["state", "dtype must be float32"]),
    ]
    for obs, words in bad_cases:
        conn, _ = openpi_connect(f"ws://127.0.0.1:{running.port}")
        conn.send(openpi_packb(obs))
        error = conn.recv(timeout=10)
        assert isinstance(error, str), f"{obs} was answered with actions"
        for word in words:
            assert word in error, (word, error)
        with pytest.raises(ConnectionClosedError) as closed:
            conn.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011  # as openpi: internal error
        conn.close()

    # an object array (pickle) is refused before anything is built from it
    conn, _ = openpi_connect(f"ws://127.0.0.1:{running.port}")
    pickled = {"state": {b"__ndarray__": True, b"data": b"\x80\x04N.", b"dtype": "|O", b"shape": [1]}}
    conn.send(msgpack.packb(pickled))
    error = conn.recv(timeout=10)
    assert isinstance(error, str) and "dtype" in error and "refused" in error
    conn.close()

    # the bystander, connected all along, and a new connection are both still served
    expected = policy.act({"state": state})
    with bystander:
        np.testing.assert_allclose(openpi_infer(bystander, {"state": state})["actions"], expected, rtol=1e-5, atol=1e-6)
    conn, _ = openpi_connect(f"ws://127.0.0.1:{running.port}")
    with conn:
        np.testing.assert_allclose(openpi_infer(conn, {"state": state})["actions"], expected, rtol=1e-5, atol=1e-6)
    assert running.server.errors == len(bad_cases) + 1


def test_unknown_policies_are_refused_at_the_handshake_and_healthz_answers(cloud) -> None:
    running, _ = cloud
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{running.port}/?policy=nothing", open_timeout=5)
    assert refused.value.response.status_code == 404 and b"no version of nothing" in refused.value.response.body
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{running.port}/bad%20name!", open_timeout=5)
    assert refused.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as health:  # a plain GET, not a websocket: the client sees the status
        connect(f"ws://127.0.0.1:{running.port}/healthz", open_timeout=5)
    assert health.value.response.status_code == 200


def test_an_oversized_message_closes_only_that_connection(tmp_path) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    policy = make_policy("mlp", CONFIG)
    registry.publish("pusht", policy_to_bytes(policy))
    running = RunningServer(registry, default_policy="pusht", max_message_bytes=1024)
    try:
        conn, _ = openpi_connect(f"ws://127.0.0.1:{running.port}")
        conn.send(openpi_packb({"state": np.zeros(1000, np.float32)}))
        with pytest.raises(ConnectionClosedError) as closed:
            conn.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
        state = np.ones(3, np.float32)
        conn, _ = openpi_connect(f"ws://127.0.0.1:{running.port}")
        with conn:
            result = openpi_infer(conn, {"state": state})
        np.testing.assert_allclose(result["actions"], policy.act({"state": state}), rtol=1e-5, atol=1e-6)
    finally:
        running.stop()


def test_with_device_credentials_an_openpi_api_key_is_required(tmp_path) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish("pusht", policy_to_bytes(make_policy("mlp", CONFIG)))
    registry.publish("other", policy_to_bytes(make_policy("mlp", CONFIG)))
    devices = DeviceRegistry(tmp_path / "devices.json")
    token = devices.add("arm-1", policies=("pusht",))
    running = RunningServer(registry, default_policy="pusht", devices=devices)
    try:
        for headers, status in (
            (None, 401),
            ({"Authorization": "Api-Key flt_wrong"}, 401),
            ({"Authorization": f"Api-Key {token}"}, None),
        ):
            if status is None:  # openpi's WebsocketClientPolicy(api_key=...) sends exactly this header
                with connect(f"ws://127.0.0.1:{running.port}", additional_headers=headers, open_timeout=5) as conn:
                    assert openpi_unpackb(conn.recv(timeout=5))["policy_name"] == "pusht"
                continue
            with pytest.raises(InvalidStatus) as refused:
                connect(f"ws://127.0.0.1:{running.port}", additional_headers=headers, open_timeout=5)
            assert refused.value.response.status_code == status
        with pytest.raises(InvalidStatus) as refused:  # a device limited to pusht may not drive another policy
            connect(f"ws://127.0.0.1:{running.port}/other", additional_headers={"Authorization": f"Api-Key {token}"})
        assert refused.value.response.status_code == 403
    finally:
        running.stop()
