"""`fleetloop certs init`: a private CA and the cloud's server certificate.

Edges trust the CA (``ca.pem``, copied to each robot; phones install it); the gateway serves ``server.pem``
with ``server.key``. The server certificate names every host the cloud is reached by (loopback is always
included), since TLS checks the name the edge dialled.

A device that trusts the CA trusts whatever it signs, so the CA is bound to the cloud's own names: critical name
constraints permit only the DNS names given at ``certs init`` (and ``localhost``), and a certificate it signs for
any other name (a bank's, a mail server's) fails verification (addresses stay unconstrained: see
``_name_constraints``). Its key lives apart from what the server reads: in
``<certs>-ca-key/ca.key`` beside the certificate folder (``fleetloop-data/certs-ca-key/``), which the cloud never
opens; keep it offline once the certificates are made.
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
CA_KEY_FILE = "ca.key"
CA_KEY_DIR_SUFFIX = "-ca-key"  # the CA key's folder: the certificate folder's name with this suffix, beside it
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

    @property
    def ca_key(self) -> Path:
        """The CA's private key: never read by the cloud, so it lies outside the folder the cloud reads."""
        return self.directory.with_name(self.directory.name + CA_KEY_DIR_SUFFIX) / CA_KEY_FILE

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


def _name_constraints(hosts: list[str]) -> x509.NameConstraints:
    """The DNS names the CA may vouch for: exactly those of ``hosts`` (each also covers its subdomains, per RFC 5280).

    Addresses are left unconstrained: gRPC's TLS library (BoringSSL) refuses every certificate under a CA that
    constrains IP addresses ("unsupported name constraint type"), and the cloud's certificate always names some."""
    permitted = [name for name in map(_alt_name, hosts) if isinstance(name, x509.DNSName)]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def init_certs(directory: str | Path, hosts: tuple[str, ...] = (), days: int = 825, force: bool = False) -> CertPaths:
    """Creates the CA and a server certificate for ``hosts`` (plus loopback). Refuses to overwrite unless ``force``."""
    paths = CertPaths(Path(directory))
    if paths.exist() and not force:
        raise FileExistsError(f"{paths.directory} already holds certificates (use --force to replace them)")
    for host in hosts:
        if not host or len(host) > 253 or any(c.isspace() for c in host):
            raise ValueError(f"host: {host!r} is not a host name or address")
    paths.directory.mkdir(parents=True, exist_ok=True)
    paths.ca_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    names = list(dict.fromkeys((*DEFAULT_HOSTS, *hosts)))
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
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(_name_constraints(names), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

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
    _write(paths.ca_key, ca_key.private_bytes(**private), private=True)
    (paths.directory / CA_KEY_FILE).unlink(missing_ok=True)  # where fleetloop once kept it, beside the server's
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


def ca_fingerprint(ca_path: str | Path) -> str:
    """The CA certificate's SHA-256 fingerprint as browsers and ``openssl x509 -fingerprint`` show it (AB:CD:...),
    for a person to compare what a phone downloaded with what the cloud printed."""
    cert = x509.load_pem_x509_certificate(Path(ca_path).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def certs_problem(paths: CertPaths) -> str | None:
    """Why the cloud should not serve ``paths`` (made by a fleetloop before name-constrained CAs), or None.
    Looks at the CA certificate and at where the CA key lies; never opens the key."""
    cert = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    try:
        cert.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return (
            f"the CA in {paths.directory} has no name constraints (made by an older fleetloop): a device that "
            "trusts it would trust a certificate it signs for any site; make new certificates with "
            "`fleetloop certs init --force --host <each name the cloud is reached by>` and install the new "
            f"{paths.ca.name} on every robot and phone"
        )
    legacy_key = paths.directory / CA_KEY_FILE
    if legacy_key.exists():
        return f"the CA key {legacy_key} lies beside the server's files: move it to {paths.ca_key} (never read here)"
    return None
