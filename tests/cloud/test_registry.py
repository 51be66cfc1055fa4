import hashlib
import subprocess
import sys

import pytest

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.version_registry import PolicyRegistry
from policies.factory import make_policy
from policies.signing import NOT_SIGNED, UnsignedVersion
from policies.version_digest import PREFIX, digest_matches, digest_of
from policies.weights import policy_to_bytes

CLI = [sys.executable, "-m", "fleetloop.cli", "policy"]


def weights(action_dim: int = 2) -> bytes:
    config = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": action_dim}
    return policy_to_bytes(make_policy("mlp", config))


def test_versions_are_monotonic_across_reopen(tmp_path) -> None:
    registry = PolicyRegistry(tmp_path)
    assert registry.latest("pick") is None
    assert registry.publish("pick", b"one").version == 1
    v2 = PolicyRegistry(tmp_path).publish("pick", b"two")
    assert v2.version == 2
    assert v2.sha256 == hashlib.sha256(b"two").hexdigest()
    assert registry.latest("pick") == v2
    assert registry.read("pick", 1) == b"one"


def test_refuses_bad_policy_name(tmp_path) -> None:
    with pytest.raises(ValueError, match="policy_name"):
        PolicyRegistry(tmp_path).publish("../escape", b"x")


def test_rollback_republishes_an_earlier_version_as_the_next_one(tmp_path) -> None:
    registry = PolicyRegistry(tmp_path)
    for content in (b"one", b"two", b"bad"):
        registry.publish("pick", content)
    back = registry.rollback("pick")
    assert (back.version, back.note) == (4, "rollback to v2")
    assert registry.read("pick", 4) == b"two" and registry.latest("pick") == back
    assert registry.rollback("pick", to_version=1).version == 5 and registry.read("pick", 5) == b"one"
    assert registry.versions("pick") == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="to_version"):
        registry.rollback("pick", to_version=5)
    with pytest.raises(ValueError, match="policy_name"):
        registry.rollback("place")


def test_policy_rollback_command(tmp_path) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish("pick", weights())
    registry.publish("pick", weights())
    done = subprocess.run([*CLI, "rollback", "pick", "--root", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pick v3 published with the weights of v1" in done.stderr
    registry.read_verified("pick", 3)  # signed again, as v3
    listed = subprocess.run([*CLI, "list", "pick", "--root", str(tmp_path)], capture_output=True, text=True)
    assert "v3 (latest): rollback to v1" in listed.stdout
    bad = subprocess.run(
        [*CLI, "rollback", "pick", "--to", "9", "--root", str(tmp_path)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "to_version" in bad.stderr


def test_policy_names_are_whole_and_unique_regardless_of_case(tmp_path) -> None:
    registry = PolicyRegistry(tmp_path)
    registry.publish("panda_pick_cube", b"weights")
    for name, why in (("PANDA_pick_cube", "differs only in case"), ("panda_pick_cube\n", "policy_name")):
        with pytest.raises(ValueError, match=why):
            registry.publish(name, b"other weights")
    assert registry.latest("Panda_Pick_Cube") is None and registry.latest("panda_pick_cube").version == 1


def test_versions_published_before_signing_are_refused_until_the_lab_signs_them(tmp_path) -> None:
    layout = DataLayout(tmp_path)
    PolicyRegistry(layout.registry).publish("pick", weights())  # as a registry from before versions were signed
    registry = signing_registry(layout)
    with pytest.raises(UnsignedVersion, match=NOT_SIGNED):
        registry.read_verified("pick", 1)
    done = subprocess.run([*CLI, "sign", "pick", "--root", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0 and "signed v1" in done.stderr, done.stderr
    registry.read_verified("pick", 1)
    assert registry.latest("pick").sha256.startswith(PREFIX)
    assert digest_matches(registry.read("pick", 1), registry.latest("pick").sha256)
    again = subprocess.run([*CLI, "sign", "pick", "--root", str(tmp_path)], capture_output=True, text=True)
    assert "signed by the learner already" in again.stderr


def test_policy_list_shows_every_version_s_note(tmp_path, capsys) -> None:
    from fleetloop.cli import main

    registry = signing_registry(DataLayout(tmp_path))
    for note in ("hg-dagger on 60 labelled steps", "hg-dagger on 160 labelled steps"):
        registry.publish("pick", weights(), note)
    registry.rollback("pick", 1)
    assert registry.describe("pick", 2).note == "hg-dagger on 160 labelled steps"
    assert main(["policy", "list", "pick", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "v1: hg-dagger on 60 labelled steps",
        "v2: hg-dagger on 160 labelled steps",
        "v3 (latest): rollback to v1",
    ]


@pytest.mark.parametrize(
    "hint",
    [
        '{"version": 2, "size_bytes": 10, "file": "../../elsewhere/file"}',  # a file outside the policy's folder
        '{"version": 2, "size_bytes": 10, "file": "/etc/passwd"}',
        '{"version": 5, "size_bytes": 10, "file": ".v000005.safetensors.1.tmp"}',  # not the next version
        '{"version": 2, "size_bytes": 0, "file": ".v000002.safetensors.1.tmp"}',
        '{"version": "two"}',
        "not json",
    ],
)
def test_a_publishing_hint_that_names_no_next_version_in_its_own_folder_is_ignored(tmp_path, hint: str) -> None:
    """The hint a publish leaves (which file grows, for a gateway to send it as it is written) is read as hostile: a
    file elsewhere, another version than the next, or no hint at all is no publish in flight."""
    registry = PolicyRegistry(tmp_path)
    registry.publish("pick", weights())
    (tmp_path / "pick" / "publishing.json").write_text(hint)
    assert registry.publishing("pick") is None


def test_versions_are_signed_for_bfloat16_once_a_gateway_sends_it(tmp_path) -> None:
    from policies.signing import MANIFEST, Manifest
    from policies.weights import read_metadata

    registry = signing_registry(DataLayout(tmp_path))

    def signed_for(version: int) -> set[str]:
        manifest = Manifest.from_json(read_metadata(registry.read("pick", version))[MANIFEST])
        return set(manifest.state_sha256)

    registry.publish("pick", weights())
    assert signed_for(1) == {"float32"}  # no bf16 cast and hash when no gateway sends bf16
    registry.sends_in("float32")
    assert registry.wire_dtypes() == ("float32",)
    PolicyRegistry(registry.root).sends_in("bfloat16")  # the gateway's registry, beside the learner's
    registry.publish("pick", weights())
    assert signed_for(2) == {"float32", "bfloat16"}
    assert registry.versions("pick") == [1, 2] and registry.latest("pick").version == 2
    with pytest.raises(ValueError, match="wire_dtype"):
        registry.sends_in("float8")
    for garbage in (b"{", b'{"bfloat16": 1}', b'[["bfloat16"], "float8"]'):  # written by someone else: float32 only
        (tmp_path / "registry" / "@wire-dtypes.json").write_bytes(garbage)
        assert registry.wire_dtypes() == ("float32",)


def test_a_signed_version_written_body_first_is_the_file_the_learner_signed(tmp_path) -> None:
    """The data section lands before the signed header is made; the file recorded is the signed one, whole, its
    record's digest and size are the file's, and its header length was known before its tensors were hashed."""
    registry = signing_registry(DataLayout(tmp_path))
    data = weights()
    assert registry.signer.signed_header_bytes(data, "pick", 1) == len(
        registry.signer.signed_header(data, "pick", 1)[0]
    )
    version = registry.publish("pick", data)
    stored = registry.read("pick", 1)
    registry.check(stored, "pick", 1)
    assert (version.sha256, version.size_bytes) == (digest_of(stored), len(stored))
    assert version.sha256.startswith(PREFIX) and digest_matches(stored, version.sha256)
    assert [p.name for p in (tmp_path / "registry" / "pick").iterdir() if p.name.endswith(".tmp")] == []


def test_listeners_hear_of_each_publish_through_this_registry_and_cannot_fail_it(tmp_path, caplog) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    heard: list[tuple[int | None, int | None]] = []

    def listener() -> None:  # once the hint is left (v being written), once it is recorded
        publishing, latest = registry.publishing("pick"), registry.latest("pick")
        heard.append((publishing.version if publishing else None, latest.version if latest else None))

    def failing() -> None:
        raise RuntimeError("the gateway's loop is closed")

    stop = registry.on_change(listener)
    registry.on_change(failing)
    registry.publish("pick", weights())
    assert heard == [(1, None), (None, 1)] and "a registry listener failed" in caplog.text
    stop()
    assert registry.publish("pick", weights()).version == 2 and len(heard) == 2


def test_each_publish_takes_the_version_before_last_out_of_the_page_cache(tmp_path, monkeypatch) -> None:
    """Its memory is what the new version is written into (fresh memory is slow on a VM: see files.drop_cached)."""
    import cloud.data.version_registry as version_registry

    dropped = []
    monkeypatch.setattr(version_registry, "drop_cached", dropped.append)
    registry = PolicyRegistry(tmp_path)
    for payload in (b"one", b"two", b"three", b"four"):
        registry.publish("pick", payload)
    assert dropped == [registry.path("pick", 1), registry.path("pick", 2)]
    assert registry.read("pick", 1) == b"one"  # out of the cache, still on disk


def test_dropping_a_file_from_the_cache_keeps_it_whole_and_skips_one_that_is_gone(tmp_path) -> None:
    from cloud.data.files import drop_cached

    path = tmp_path / "v.bin"
    path.write_bytes(b"x" * 100_000)
    drop_cached(path)
    assert path.read_bytes() == b"x" * 100_000
    drop_cached(tmp_path / "gone.bin")
