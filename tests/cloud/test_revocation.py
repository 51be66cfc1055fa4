"""CredentialWatch: a held connection is closed once its credential no longer holds, whoever read the change first."""

from __future__ import annotations

import asyncio
import logging

from cloud.security.devices import DeviceRegistry
from cloud.security.revocation import CredentialWatch


def test_a_revocation_another_reader_saw_first_still_closes_the_connection(tmp_path) -> None:
    path = tmp_path / "devices.json"
    DeviceRegistry(path).add("robot-1", policies=("pick",))
    DeviceRegistry(path).add("robot-2", policies=("pick",))
    gateway_view = DeviceRegistry(path)
    watch = CredentialWatch(gateway_view)
    closed: list[str] = []

    async def scenario() -> None:
        for device in gateway_view.devices():
            watch.hold(device, "tunnel", closed.append)
        DeviceRegistry(path).revoke("robot-1")  # `fleetloop devices revoke`, another process
        assert gateway_view.reload()  # authentication or a fleet call re-reads the file first
        assert watch.sweep()[0].device.id == "robot-1"
        assert closed == ["the credential of 'robot-1' was revoked"]
        assert watch.sweep() == []  # closed once; robot-2 stands

    asyncio.run(scenario())


def test_a_revocation_or_a_removed_file_closes_and_a_broken_file_keeps_the_last_good_one(tmp_path, caplog) -> None:
    path = tmp_path / "devices.json"
    DeviceRegistry(path).add("phone-1", kind="phone")
    DeviceRegistry(path).add("phone-2", kind="phone")
    view = DeviceRegistry(path)
    watch = CredentialWatch(view, period_s=0.01)
    closed: list[str] = []

    async def close(why: str) -> None:  # a websocket closes in a coroutine
        closed.append(why)

    async def scenario() -> None:
        held = watch.hold(view.get("phone-1"), "phone connection", close)
        text = path.read_text()
        path.write_text("{not json")
        with caplog.at_level(logging.ERROR, "fleetloop.security"):
            await asyncio.sleep(0.1)
        assert closed == [] and caplog.text.count("cannot read the devices file") == 1  # said once, not every 0.01 s
        path.write_text(text)
        registry = DeviceRegistry(path)
        registry.revoke("phone-1")  # ids are never reused: a revoked one stays revoked
        await asyncio.sleep(0.1)
        assert closed == ["the credential of 'phone-1' was revoked"]
        watch.release(held)

        other = watch.hold(view.get("phone-2"), "phone connection", close)
        path.unlink()  # no devices file: no credential holds
        await asyncio.sleep(0.1)
        assert len(closed) == 2
        watch.release(other)
        await asyncio.sleep(0.05)
        assert watch._task is not None and watch._task.done()  # nothing held: it stops checking

    asyncio.run(scenario())
