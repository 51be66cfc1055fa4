"""What the cloud needs before it listens: its TLS pair when asked for, and, beyond loopback, TLS and at least
one device credential (a cloud on the network never takes anonymous or plain-text robots)."""

from __future__ import annotations

from cloud.security.certs import CertPaths, certs_problem
from cloud.security.devices import DeviceRegistry
from protocol.channel import is_loopback


def tls_pair(certs: CertPaths) -> tuple[bytes, bytes]:
    """(server certificate, server key) of ``certs``; ValueError when `fleetloop certs init` has not made them, or
    an older fleetloop made them (no name constraints). The CA's key is never read."""
    if not certs.exist():
        raise ValueError(f"no certificates in {certs.directory}")
    problem = certs_problem(certs)
    if problem:
        raise ValueError(problem)
    return certs.server_cert.read_bytes(), certs.server_key.read_bytes()


def exposure_problem(host: str, tls: bool, devices: DeviceRegistry) -> str | None:
    """Why listening on ``host`` would be unsafe, or None: beyond loopback the cloud speaks TLS only and every
    device needs a credential."""
    if is_loopback(host):
        return None
    if not tls:
        return "beyond loopback the cloud speaks TLS only; run `fleetloop certs init` and start it with --tls"
    if not any(not d.revoked for d in devices.devices()):
        return (
            f"beyond loopback every device needs a credential and {devices.path} has none; "
            "add devices with `fleetloop devices add <id>`"
        )
    return None
