"""Client channels to the cloud: TLS when a CA is given, plain text only on loopback."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def target_host(target: str) -> str:
    """``host:port`` or ``[v6]:port`` -> host."""
    host, _, _ = target.rpartition(":")
    return host.strip("[]") or target


def open_channel(target: str, ca: str | Path | None = None, options: list | None = None) -> grpc.Channel:
    """A channel to ``target``: TLS verified against ``ca`` when given; refuses plain text beyond loopback."""
    if ca:
        try:
            root = Path(ca).read_bytes()
        except OSError as err:
            raise ValueError(f"--ca: cannot read {ca}: {err}") from err
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root), options=options)
    if not is_loopback(target_host(target)):
        raise ValueError(
            f"--cloud: {target} is not on this machine; fleetloop talks to it only over TLS (give --ca <ca.pem>)"
        )
    return grpc.insecure_channel(target, options=options)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that carries a device token (for calls outside the tunnel's hello)."""
    return (("authorization", f"Bearer {token}"),) if token else ()
