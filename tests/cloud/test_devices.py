"""Device credentials: issued once, stored hashed, checked, revoked."""

from __future__ import annotations

import os

import pytest

from cloud.security.devices import AuthError, DeviceRegistry


@pytest.fixture
def registry(tmp_path) -> DeviceRegistry:
    return DeviceRegistry(tmp_path / "devices.json")


def test_no_file_means_no_registry(registry: DeviceRegistry) -> None:
    assert not registry.enabled
    assert registry.devices() == []


def test_a_token_authenticates_its_device_only_and_is_never_stored(registry: DeviceRegistry) -> None:
    token = registry.add("robot-1", policies=("pick",))
    other = registry.add("robot-2")
    assert registry.enabled and token != other and len(token) > 30
    assert token not in registry.path.read_text()
    assert os.stat(registry.path).st_mode & 0o077 == 0  # not readable by others
    assert registry.authenticate("robot-1", token).policies == ("pick",)
    with pytest.raises(AuthError, match="wrong credential") as err:
        registry.authenticate("robot-1", other)
    assert err.value.field == "hello.token"
    with pytest.raises(AuthError, match="no credential"):
        registry.authenticate("robot-1", "")
    with pytest.raises(AuthError, match="wrong credential"):
        registry.authenticate("robot-9", token)
    assert token not in str(err.value)


def test_revocation_reaches_another_reader_at_its_next_call(registry: DeviceRegistry) -> None:
    token = registry.add("robot-1")
    gateway_view = DeviceRegistry(registry.path)  # the cloud's copy, as another process would hold it
    assert gateway_view.authenticate("robot-1", token).id == "robot-1"
    registry.revoke("robot-1")
    with pytest.raises(AuthError, match="revoked"):
        gateway_view.authenticate("robot-1", token)
    assert [d.revoked for d in gateway_view.devices()] == [True]
    with pytest.raises(ValueError, match="ids are never reused"):  # a revoked id gets no fresh credential
        registry.add("robot-1")
    new_token = registry.add("robot-1b")
    assert gateway_view.authenticate("robot-1b", new_token).id == "robot-1b"
    with pytest.raises(AuthError):
        gateway_view.authenticate("robot-1", token)


def test_operator_tokens_identify_their_device(registry: DeviceRegistry) -> None:
    token = registry.add("alice", kind="operator")
    assert registry.identify(token).kind == "operator"
    assert registry.identify("flt_nothing") is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"device_id": "bad id"}, "id"), ({"device_id": "r1", "kind": "toaster"}, "kind")],
)
def test_bad_devices_name_the_field(registry: DeviceRegistry, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        registry.add(**kwargs)


def test_duplicate_and_unknown_ids_are_refused(registry: DeviceRegistry) -> None:
    registry.add("robot-1")
    with pytest.raises(ValueError, match="already has a credential"):
        registry.add("robot-1")
    with pytest.raises(ValueError, match="no device"):
        registry.revoke("robot-2")


def test_a_broken_devices_file_is_named(registry: DeviceRegistry) -> None:
    registry.path.write_text("{not json")
    with pytest.raises(ValueError, match="devices.json"):
        registry.reload()
