"""`fleetloop certs init`: a private CA and the cloud's server certificate.

Edges trust the CA (``ca.pem``, copied to each robot); the gateway serves ``server.pem``
with ``server.key``. The server certificate names every host the cloud is reached by
(loopback is always included), since TLS checks the name the edge dialled.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE = "ca.pem", "server.pem", "server.key"
_CA_KEY_FILE = "ca.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertPaths:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT_FILE

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY_FILE

    def exist(self) -> bool:
        return self.ca.exists() and self.server_cert.exists() and self.server_key.exists()


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetloop"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _ca_key_usage() -> x509.KeyUsage:
    """A CA key signs certificates and revocation lists, and nothing else."""
    allowed = {"digital_signature", "key_cert_sign", "crl_sign"}
    return x509.KeyUsage(**{flag: flag in allowed for flag in _KEY_USAGE_FLAGS})


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def init_certs(directory: str | Path, hosts: tuple[str, ...] = (), days: int = 825, force: bool = False) -> CertPaths:
    """Creates the CA and a server certificate for ``hosts`` (plus loopback). Refuses to overwrite unless ``force``."""
    paths = CertPaths(Path(directory))
    if paths.exist() and not force:
        raise FileExistsError(f"{paths.directory} already holds certificates (use --force to replace them)")
    for host in hosts:
        if not host or len(host) > 253 or any(c.isspace() for c in host):
            raise ValueError(f"host: {host!r} is not a host name or address")
    paths.directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fleetloop CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _ca_key_usage(),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    names = list(dict.fromkeys((*DEFAULT_HOSTS, *hosts)))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0] if not hosts else hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    private = dict(
        encoding=pem, format=serialization.PrivateFormat.PKCS8, encryption_algorithm=serialization.NoEncryption()
    )
    _write(paths.directory / _CA_KEY_FILE, ca_key.private_bytes(**private), private=True)
    _write(paths.ca, ca_cert.public_bytes(pem), private=False)
    _write(paths.server_key, server_key.private_bytes(**private), private=True)
    _write(paths.server_cert, server_cert.public_bytes(pem), private=False)
    return paths


def server_hosts(cert_path: str | Path) -> list[str]:
    """The names a server certificate is valid for."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in alt.get_values_for_type(x509.DNSName)] + [
        str(v) for v in alt.get_values_for_type(x509.IPAddress)
    ]
