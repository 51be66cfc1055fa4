"""Device credentials: issued once, stored hashed, checked, revoked."""

from __future__ import annotations

import json
import os

import pytest

from cloud.security.devices import AuthError, Device, DeviceRegistry


@pytest.fixture
def registry(tmp_path) -> DeviceRegistry:
    return DeviceRegistry(tmp_path / "devices.json")


def test_no_file_means_no_registry(registry: DeviceRegistry) -> None:
    assert not registry.enabled
    assert registry.devices() == []


def test_a_token_authenticates_its_device_only_and_is_never_stored(registry: DeviceRegistry) -> None:
    token = registry.add("robot-1", policies=("pick",))
    other = registry.add("robot-2", policies=("pick",))
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
    token = registry.add("robot-1", policies=("pick",))
    gateway_view = DeviceRegistry(registry.path)  # the cloud's copy, as another process would hold it
    assert gateway_view.authenticate("robot-1", token).id == "robot-1"
    registry.revoke("robot-1")
    with pytest.raises(AuthError, match="revoked"):
        gateway_view.authenticate("robot-1", token)
    assert [d.revoked for d in gateway_view.devices()] == [True]
    with pytest.raises(ValueError, match="ids are never reused"):  # a revoked id gets no fresh credential
        registry.add("robot-1")
    new_token = registry.add("robot-1b", policies=("pick",))
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
    registry.add("robot-1", policies=("pick",))
    with pytest.raises(ValueError, match="already has a credential"):
        registry.add("robot-1")
    with pytest.raises(ValueError, match="no device"):
        registry.revoke("robot-2")


def test_a_broken_devices_file_is_named(registry: DeviceRegistry) -> None:
    registry.path.write_text("{not json")
    with pytest.raises(ValueError, match="devices.json"):
        registry.reload()


def test_a_robot_record_binds_kind_source_datasets_and_policies(registry: DeviceRegistry) -> None:
    registry.add("arm-1", policies=("so101", "so101.reward"), sources=("robot",))
    registry.add("cart-1", embodiments=("pusht", "pusht_v2"), policies=("pusht",))
    arm, cart = registry.get("arm-1"), registry.get("cart-1")
    assert arm.datasets == ("so101",)  # no embodiments: its policies' own datasets (a classifier's, too)
    assert cart.datasets == ("pusht", "pusht_v2")
    arm.check_robot_hello("robot", "robot", "so101", [("hello.policy_name", "so101")])
    for hello, field in (
        (("phone", "robot", "so101", []), "hello.resource.kind"),
        (("robot", "sim", "so101", []), "hello.resource.source"),
        (("robot", "robot", "panda_pick_cube", []), "hello.resource.capabilities.embodiment"),
        (("robot", "robot", "so101", [("hello.outcome_policy", "pusht.reward")]), "hello.outcome_policy"),
    ):
        with pytest.raises(AuthError) as err:
            arm.check_robot_hello(*hello)
        assert err.value.field == field
    cart.check_robot_hello("robot", "sim", "pusht_v2", [])  # no sources listed: either robot source
    with pytest.raises(AuthError, match="hello.resource.source"):
        cart.check_robot_hello("robot", "phone", "pusht", [])  # ...but never a phone's


def test_phones_and_operators_open_no_robot_tunnel(registry: DeviceRegistry) -> None:
    registry.add("phone-1", kind="phone")
    registry.add("alice", kind="operator")
    for device_id, why in (("phone-1", "phone channel"), ("alice", "opens no robot tunnel")):
        with pytest.raises(AuthError, match=why) as err:
            registry.get(device_id).check_robot_hello("robot", "sim", "pusht", [])
        assert err.value.field == "hello.resource.kind"
    with pytest.raises(ValueError, match="^embodiment:"):
        registry.add("phone-2", kind="phone", embodiments=("pusht",))


def test_a_devices_file_from_before_the_record_fields_still_loads(registry: DeviceRegistry) -> None:
    old = {"id": "robot-1", "kind": "robot", "token_sha256": "0" * 64, "policies": [], "added_unix": 1.0}
    registry.path.write_text(json.dumps({"devices": [old, {**old, "id": "robot-2", "policies": ["pick"]}]}))
    loaded = DeviceRegistry(registry.path)
    one, two = loaded.get("robot-1"), loaded.get("robot-2")
    assert (one.embodiments, one.sources, one.datasets) == ((), (), ())  # no policies, no embodiments: no dataset
    assert two.datasets == ("pick",) and not two.may_run("place")
    two.check_robot_hello("robot", "sim", "pick", [("hello.policy_name", "pick")])
    with pytest.raises(AuthError, match="fleetloop devices allow robot-1 --embodiment") as err:
        one.check_robot_hello("robot", "sim", "anything", [("hello.policy_name", "anything")])
    assert err.value.field == "record.embodiments"


def test_ids_are_never_reused_and_unique_regardless_of_case(registry: DeviceRegistry) -> None:
    registry.add("robot-1", embodiments=("pick",))
    registry.revoke("robot-1")
    for device_id, why in (("robot-1", "never reused"), ("ROBOT-1", "differs only in case"), ("robot-1\n", "^id:")):
        with pytest.raises(ValueError, match=why):
            registry.add(device_id)
    with pytest.raises(ValueError, match="^policy:"):
        registry.add("robot-2", policies=("pick\n",))
    with pytest.raises(ValueError, match="differ only in case"):
        registry.add("robot-2", embodiments=("pusht", "PushT"))
    twins = json.loads(registry.path.read_text())
    twins["devices"].append({**twins["devices"][0], "id": "Robot-1"})
    registry.path.write_text(json.dumps(twins))
    with pytest.raises(ValueError, match=r"devices\[1\]\.id: 'Robot-1' differs only in case"):
        registry.reload()


def test_whether_credentials_are_required_is_kept_when_the_file_goes(registry: DeviceRegistry, caplog) -> None:
    token = registry.add("robot-1", policies=("pick",))
    cloud = DeviceRegistry(registry.path)  # made while the file exists: credentials required, for good
    saved = registry.path.read_bytes()
    registry.path.unlink()
    with pytest.raises(AuthError, match="devices file is missing"):
        cloud.authenticate("robot-1", token)
    assert cloud.enabled and cloud.identify(token) is None
    assert caplog.text.count("is gone: every device is refused") == 1
    registry.path.write_bytes(saved)  # the file is back
    assert cloud.authenticate("robot-1", token).id == "robot-1"
    opened = DeviceRegistry(registry.path.with_name("none.json"))  # no file at start: open, also once one appears
    DeviceRegistry(opened.path).add("robot-9", policies=("pick",))
    assert not opened.enabled and opened.reload()
    assert "no credentials are checked until it restarts" in caplog.text


def test_a_robot_record_names_the_datasets_it_records_into(registry: DeviceRegistry) -> None:
    with pytest.raises(ValueError, match="^embodiment: a robot's record names the datasets") as err:
        registry.add("robot-1")
    assert "--embodiment" in str(err.value) and "--policy" in str(err.value)
    assert registry.get("robot-1") is None
    registry.add("alice", kind="operator")  # an operator or a phone records nothing: nothing to bind
    registry.add("phone-1", kind="phone")


def test_allow_binds_a_record_from_before_records_bound_datasets(registry: DeviceRegistry) -> None:
    old = {"id": "robot-1", "kind": "robot", "token_sha256": "0" * 64, "policies": [], "added_unix": 1.0}
    registry.path.write_text(json.dumps({"devices": [old, {**old, "id": "gone", "revoked_unix": 2.0}]}))
    registry.reload()
    with pytest.raises(ValueError, match="^embodiment:"):
        registry.allow("robot-1", sources=("sim",))  # still records nowhere
    bound = registry.allow("robot-1", embodiments=("pusht",))
    assert (bound.datasets, bound.policies, bound.token_sha256) == (("pusht",), (), "0" * 64)
    DeviceRegistry(registry.path).get("robot-1").check_robot_hello("robot", "sim", "pusht", [])  # saved
    assert registry.allow("robot-1", policies=("pusht",)).policies == ("pusht",)  # from any policy to these
    with pytest.raises(ValueError, match="differ only in case"):
        registry.allow("robot-1", embodiments=("PushT",))
    for device_id, why in (("gone", "was revoked"), ("robot-9", "no device")):
        with pytest.raises(ValueError, match=f"^id: .*{why}"):
            registry.allow(device_id, embodiments=("pusht",))


def test_a_record_without_policies_runs_only_its_own_datasets_policies() -> None:
    bound = Device("robot-1", "robot", "0" * 64, embodiments=("pusht",))
    assert bound.may_run("pusht") and bound.may_run("pusht.reward")
    assert not bound.may_run("panda_pick_cube") and not bound.may_run("panda_pick_cube.reward")
    assert bound.runnable == "the policies of pusht"
    listed = Device("robot-2", "robot", "0" * 64, policies=("pusht",), embodiments=("pusht", "other"))
    assert listed.may_run("pusht") and not listed.may_run("other")
