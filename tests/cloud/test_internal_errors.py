"""A failure the gateway did not expect reaches the caller as an incident id, never as the exception's text; the
log holds the traceback under the same id. The real gateway on loopback; the failures are injected."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.gateway import server
from cloud.gateway.config import GatewayConfig
from cloud.gateway.control import FleetControl
from cloud.gateway.server import Gateway
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from tests.e2e.raw_edge import hello

SECRET = "/srv/fleetloop-data/secret.json"


def fail(*args, **kwargs):
    raise RuntimeError(f"cannot parse {SECRET}")


def logged_incident(text: str, caplog: pytest.LogCaptureFixture) -> bool:
    assert SECRET not in text and "RuntimeError" not in text, text
    incident = text.split("incident ", 1)[1].split(")", 1)[0]
    return any(incident in r.getMessage() and r.exc_info for r in caplog.records)


async def with_gateway(root: Path, talk) -> object:
    gateway = Gateway(GatewayConfig(port=0), EpisodeStore(root / "store"), PolicyRegistry(root / "registry"))
    port = await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await talk(channel)
    finally:
        await gateway.stop()


def test_a_fleet_control_call_that_fails_answers_internal_with_an_incident(tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(FleetControl, "_check_operator", fail)
    caplog.set_level(logging.INFO)

    async def talk(channel) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await pb_grpc.FleetControlStub(channel).Status(pb.FleetStatusRequest())
        return failed.value

    failed = asyncio.run(with_gateway(tmp_path, talk))
    assert failed.code() == grpc.StatusCode.INTERNAL and logged_incident(failed.details(), caplog)


def test_a_message_whose_handling_fails_ends_the_stream_with_an_incident(tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(server, "check_heartbeat", fail)
    caplog.set_level(logging.INFO)

    async def talk(channel) -> list[pb.CloudMessage]:
        call = pb_grpc.TunnelStub(channel).Connect()
        await call.write(hello())
        await call.write(pb.EdgeMessage(heartbeat=pb.Heartbeat(mono_ns=1)))
        return [message async for message in call]

    answers = asyncio.run(with_gateway(tmp_path, talk))
    assert answers[0].HasField("welcome")
    (error,) = [m.error for m in answers if m.HasField("error")]
    assert error.code == "internal" and logged_incident(error.message, caplog)
