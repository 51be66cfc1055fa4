"""Attacks on the cloud's CA, on its logs and on what its errors tell clients (issue 12, point 6).

The CA a phone installs and every robot trusts, the real TLS clients (Python's ssl, i.e. OpenSSL, and gRPC) that
check it, the real gateway, openpi endpoint and phone page on loopback, and the log records the cloud writes.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import socket
import ssl
import threading
import urllib.request
from pathlib import Path

import grpc
import msgpack
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from cloud.channels.openpi_server import OpenPiConfig, OpenPiServer
from cloud.channels.phone_address import phone_certs
from cloud.channels.phone_channel import PhoneChannel, PhoneChannelConfig
from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.gateway.config import GatewayConfig
from cloud.gateway.push import PolicyPusher
from cloud.gateway.server import Gateway
from cloud.gateway.sessions import Session
from cloud.security.certs import CertPaths, init_certs
from cloud.security.exposure import tls_pair
from cloud.serving.inference import InferenceServer
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from policies.factory import make_policy
from policies.weights import policy_to_bytes
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from protocol.steps import schema_for
from tests.e2e.raw_edge import hello

FORGED = "\n02:00:00 INFO fleetloop: robot-9 connected\x1b[2J\x1b[31m"  # a fake log line, then clear the screen
CLOUD_HOST = "cloud.lab.example"
POLICY = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "chunk_size": 4, "hidden": [8]}


def ca_key_of(root: Path) -> ec.EllipticCurvePrivateKey:
    """The CA's private key, wherever `certs init` put it under ``root`` (as an attacker with the disk finds it)."""
    (path,) = root.rglob("ca.key")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def leaf_for(host: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    """A server certificate for ``host`` signed by the CA (PEM certificate, PEM key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # cryptography's verifier refuses a leaf without these whatever its name: with them, only the name counts
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    raw = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(pem), raw


def tls_handshake(folder: Path, cert_pem: bytes, key_pem: bytes, ca: Path, host: str) -> None:
    """A TLS server on loopback with ``cert_pem``; a client that trusts only ``ca`` dials it as ``host``.
    Raises ssl.SSLCertVerificationError when the client refuses the certificate."""
    (folder / "leaf.pem").write_bytes(cert_pem)
    (folder / "leaf.key").write_bytes(key_pem)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(folder / "leaf.pem", folder / "leaf.key")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    threading.Thread(target=serve, daemon=True).start()
    client = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(listener.getsockname(), timeout=5) as raw:
        with client.wrap_socket(raw, server_hostname=host):
            pass
    listener.close()


def test_a_certificate_the_ca_signs_for_another_site_is_refused(tmp_path: Path) -> None:
    """An attacker who gets the fleet's CA key (a copied data folder, a backup) signs a certificate for
    example.com: every phone that installed ca.pem, and every robot, would take it for the real site."""
    paths = init_certs(tmp_path / "certs", hosts=(CLOUD_HOST,))
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    ca_key = ca_key_of(tmp_path)
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical  # a client that does not understand them must refuse the CA, not skip them
    # The cloud's own name still verifies: the CA works for what it is for.
    tls_handshake(tmp_path, *leaf_for(CLOUD_HOST, ca, ca_key), paths.ca, CLOUD_HOST)
    with pytest.raises(ssl.SSLCertVerificationError, match="name constraint|permitted"):
        tls_handshake(tmp_path, *leaf_for("example.com", ca, ca_key), paths.ca, "example.com")
    builder = x509.verification.PolicyBuilder().store(x509.verification.Store([ca]))
    own = x509.load_pem_x509_certificate(leaf_for(CLOUD_HOST, ca, ca_key)[0])
    builder.build_server_verifier(x509.DNSName(CLOUD_HOST)).verify(own, [])  # the verifier takes the cloud's own
    verifier = builder.build_server_verifier(x509.DNSName("example.com"))
    evil = x509.load_pem_x509_certificate(leaf_for("example.com", ca, ca_key)[0])
    with pytest.raises(x509.verification.VerificationError, match="name constraint|excluded|permitted"):
        verifier.verify(evil, [])


def test_the_cloud_serves_tls_without_the_ca_key_in_reach(tmp_path: Path) -> None:
    """An attacker who breaks into the cloud process reads the folder it serves its certificates from, finds the CA
    key beside server.key, and signs certificates every device trusts."""
    paths = init_certs(tmp_path / "certs")
    private = [p.name for p in paths.directory.iterdir() if b"PRIVATE KEY" in p.read_bytes()]
    assert private == ["server.key"], f"private keys beside the server's: {private}"
    for key in tmp_path.rglob("ca.key"):  # taken offline: the cloud must start and serve without it
        key.unlink()
    assert phone_certs(paths, "0.0.0.0", CLOUD_HOST, "") == paths  # the phone port takes them as they are

    async def scenario() -> None:
        cert, key = tls_pair(CertPaths(paths.directory))
        gateway = Gateway(
            GatewayConfig(port=0, tls_cert=cert, tls_key=key),
            EpisodeStore(tmp_path / "store"),
            PolicyRegistry(tmp_path / "registry"),
        )
        port = await gateway.start()
        try:
            channel = grpc.aio.secure_channel(
                f"localhost:{port}", grpc.ssl_channel_credentials(root_certificates=paths.ca.read_bytes())
            )
            await asyncio.wait_for(channel.channel_ready(), timeout=5)  # the TLS handshake, checked against ca.pem
            await channel.close()
        finally:
            await gateway.stop()

    asyncio.run(scenario())
    assert not list(tmp_path.rglob("ca.key"))  # nor made again


def ca_sha256(pem: bytes) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode())).hexdigest().upper()


def test_a_swapped_ca_download_can_be_told_from_the_real_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A man in the middle swaps the ca.pem a phone downloads on first use for his own CA: with no fingerprint
    printed beside the pairing QR code, the person pairing has nothing to compare it with."""
    paths = init_certs(tmp_path / "certs")
    expected = ca_sha256(paths.ca.read_bytes())

    async def scenario() -> tuple[str, bytes]:
        gateway = Gateway(GatewayConfig(port=0), EpisodeStore(tmp_path / "store"), PolicyRegistry(tmp_path / "reg"))
        config = PhoneChannelConfig(
            credentials=tmp_path / "phones.json", tls_cert=paths.server_cert, tls_key=paths.server_key, tls_ca=paths.ca
        )
        channel = PhoneChannel(config, gateway)
        await gateway.start()
        port = await channel.start()
        try:
            trusted = ssl.create_default_context(cafile=str(paths.ca))

            def get(path: str) -> bytes:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", timeout=5, context=trusted) as answer:
                    return answer.read()

            return (await asyncio.to_thread(get, "/phone")).decode(), await asyncio.to_thread(get, "/phone/ca.pem")
        finally:
            await channel.stop()
            await gateway.stop()

    page, downloaded = asyncio.run(scenario())
    printed = capsys.readouterr().out
    between_url_and_code = printed.split("phone pairing URL:", 1)[1].split("scan to pair a phone", 1)[0]
    fingerprints = {line.rsplit(" ", 1)[-1].replace(":", "") for line in between_url_and_code.splitlines()}
    assert expected in fingerprints, printed  # printed beside the pairing URL and the QR code
    assert ca_sha256(downloaded) == expected
    shown = page.split('id="ca-fingerprint">', 1)[1].split("<", 1)[0]  # where the page links ca.pem
    assert shown.replace(":", "") == expected


def test_a_rejected_reason_cannot_forge_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A robot refuses a policy version with a reason holding a newline, a fake 'robot-9 connected' log line and
    ANSI escapes that clear the operator's terminal: the log would show a robot that never connected."""
    resource = ResourceInfo(
        "robot-1",
        "robot",
        Capabilities((ArraySpec("state", "float32", (3,)),), ArraySpec("action", "float32", (2,)), 10.0, "pick"),
    )
    session = Session(resource, "pick", schema_for([("state", "float32", (3,))], ("float32", (2,))))
    session.subscription("pick").sent_version = 2  # it was sent v1, then v2 of its policy
    pusher = PolicyPusher(GatewayConfig(port=0), PolicyRegistry(tmp_path / "registry"), {"robot-1": session})
    caplog.set_level(logging.INFO)
    # v1 refused for good, v2 could not be applied (the gateway then resends a snapshot): each is logged once
    for version, bad in ((1, True), (2, False)):
        reason = "x" * 10 + FORGED + "y" * 5000
        pusher.on_rejected(session, pb.PolicyRejected(policy_name="pick", version=version, reason=reason, bad=bad))
    lines = [record.getMessage() for record in caplog.records if "pick v" in record.getMessage()]
    assert len(lines) == 2, [r.getMessage() for r in caplog.records]
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and len(line) < 600, line
        assert "\\n02:00:00 INFO fleetloop: robot-9 connected\\x1b[2J" in line  # shown escaped, on the one line


def mismatched_weights() -> bytes:
    """A version whose tensors do not fit its config: building it fails inside torch."""
    data = policy_to_bytes(make_policy("mlp", {**POLICY, "hidden": [16]}))
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    header["__metadata__"]["config"] = json.dumps(POLICY, sort_keys=True)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + header_len :]


def openpi_array(array: np.ndarray) -> dict:
    return {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": array.dtype.str, b"shape": list(array.shape)}


async def openpi_session(registry: PolicyRegistry, observation: dict) -> str:
    """Connects an openpi client to a real endpoint, sends one observation; the server's text error frame."""
    inference = InferenceServer(registry)
    server = OpenPiServer(inference, registry, OpenPiConfig(default_policy="pusht"))
    port = await server.start()
    try:
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            await asyncio.wait_for(ws.recv(), 5)  # the metadata
            await ws.send(msgpack.packb(observation, use_bin_type=True))
            return await asyncio.wait_for(ws.recv(), 20)
    finally:
        await server.stop()
        await inference.close()


def test_an_openpi_key_cannot_forge_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An openpi client names an observation key holding a newline, a fake log line and ANSI escapes: the refusal
    that names the key would write them into the cloud's log as they came."""
    registry = signing_registry(DataLayout(tmp_path))  # as the learner publishes
    registry.publish("pusht", policy_to_bytes(make_policy("mlp", POLICY)))
    caplog.set_level(logging.INFO)
    key = "state" + FORGED
    answer = asyncio.run(openpi_session(registry, {key: openpi_array(np.zeros(3, np.float32))}))
    assert isinstance(answer, str) and "is not an input of pusht" in answer  # the client still hears which key
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals, [r.getMessage() for r in caplog.records]
    for line in refusals:
        assert "\n" not in line and "\x1b" not in line, line


def test_an_openpi_client_hears_no_internals(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An openpi client drives a policy whose weights fail to build and reads the server's exception text (torch's
    messages, module and tensor names) in the error frame: a map of the server's insides."""
    registry = signing_registry(DataLayout(tmp_path))  # as the learner publishes
    registry.publish("pusht", mismatched_weights())
    caplog.set_level(logging.INFO)
    answer = asyncio.run(openpi_session(registry, {"state": openpi_array(np.zeros(3, np.float32))}))
    assert isinstance(answer, str)
    for internal in ("size mismatch", "state_dict", "torch", "Error(s)", "Traceback", "ValueError"):
        assert internal not in answer, answer
    incident = answer.split("incident ", 1)[1].split(")", 1)[0]
    logged = [r for r in caplog.records if incident in r.getMessage()]
    assert logged and any(r.exc_info and "size mismatch" in str(r.exc_info[1]) for r in logged), answer


def test_a_tunnel_client_hears_no_internals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge says hello while the cloud's disk fails under it: gRPC sends the unexpected exception's type and
    text back to the edge, with the server's paths in it (here the store cannot be read)."""
    secret = "/srv/fleetloop-data/store/panda_pick_cube/episode_id"

    def disk_fails(self, episode_id: str) -> int:
        raise OSError(5, "Input/output error", secret)

    monkeypatch.setattr(EpisodeStore, "next_seq", disk_fails)  # the fault: the store fails, whatever the edge sent
    caplog.set_level(logging.INFO)

    async def scenario() -> grpc.aio.AioRpcError:
        store = EpisodeStore(tmp_path / "store")
        gateway = Gateway(GatewayConfig(port=0), store, PolicyRegistry(tmp_path / "registry"))
        port = await gateway.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = pb_grpc.TunnelStub(channel).Connect()
                await call.write(hello(held=[pb.EpisodeProgress(episode_id="e-1", next_seq=3)]))
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    async for _ in call:
                        pass
                return failed.value
        finally:
            await gateway.stop()

    failed = asyncio.run(scenario())
    details = failed.details() or ""
    assert failed.code() == grpc.StatusCode.INTERNAL, (failed.code(), details)
    for internal in (secret, "Errno", "OSError", "class"):
        assert internal not in details, details
    incident = details.split("incident ", 1)[1].split(")", 1)[0]
    assert any(incident in r.getMessage() and r.exc_info for r in caplog.records), details
