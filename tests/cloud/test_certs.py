"""`fleetloop certs init`: a CA and a server certificate that TLS clients accept for the named hosts."""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud.channels.phone_address import phone_certs
from cloud.security.certs import CertPaths, ca_fingerprint, certs_problem, init_certs, server_hosts
from cloud.security.exposure import tls_pair


def test_certificates_name_loopback_and_the_given_hosts(tmp_path) -> None:
    paths = init_certs(tmp_path / "certs", hosts=("cloud.lab.example", "10.1.2.3"))
    assert {"localhost", "127.0.0.1", "cloud.lab.example", "10.1.2.3"} <= set(server_hosts(paths.server_cert))
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert os.stat(paths.server_key).st_mode & 0o077 == 0


def test_existing_certificates_are_kept_unless_forced(tmp_path) -> None:
    first = init_certs(tmp_path).ca.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        init_certs(tmp_path)
    assert init_certs(tmp_path, force=True).ca.read_bytes() != first


def test_a_bad_host_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="^host:"):
        init_certs(tmp_path, hosts=("two words",))


def test_the_ca_key_lies_beside_the_certificate_folder_not_in_it(tmp_path) -> None:
    paths = init_certs(tmp_path / "certs")
    assert paths.ca_key == tmp_path / "certs-ca-key" / "ca.key" and paths.ca_key.is_file()
    assert os.stat(paths.ca_key).st_mode & 0o077 == 0 and os.stat(paths.ca_key.parent).st_mode & 0o077 == 0
    assert sorted(p.name for p in paths.directory.iterdir()) == ["ca.pem", "server.key", "server.pem"]
    assert certs_problem(paths) is None


def test_the_ca_vouches_only_for_the_cloud_names(tmp_path) -> None:
    paths = init_certs(tmp_path / "certs", hosts=("cloud.lab.example", "10.1.2.3"))
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert {str(n.value) for n in constraints.value.permitted_subtrees} == {"localhost", "cloud.lab.example"}


def test_the_fingerprint_is_the_sha256_of_the_ca_certificate(tmp_path) -> None:
    paths = init_certs(tmp_path / "certs")
    der = ssl.PEM_cert_to_DER_cert(paths.ca.read_text())
    fingerprint = ca_fingerprint(paths.ca)
    assert fingerprint.replace(":", "") == hashlib.sha256(der).hexdigest().upper() and len(fingerprint) == 95


def _unconstrained_ca(paths: CertPaths) -> None:
    """What fleetloop made before name constraints: a CA that may sign for any name, its key beside server.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetloop CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (paths.directory / "ca.key").write_text("-----BEGIN PRIVATE KEY-----\n")


def test_certificates_of_an_older_fleetloop_are_refused_with_what_to_run(tmp_path) -> None:
    paths = init_certs(tmp_path / "certs")
    _unconstrained_ca(paths)
    with pytest.raises(ValueError, match="no name constraints.*fleetloop certs init --force --host"):
        tls_pair(paths)
    with pytest.raises(ValueError, match="^--phone-port: .*no name constraints"):
        phone_certs(paths, "127.0.0.1", "127.0.0.1", "")
    init_certs(paths.directory, force=True)  # what the message says to run: the old key goes
    assert not (paths.directory / "ca.key").exists() and tls_pair(paths)


def test_a_ca_key_left_beside_the_server_files_is_refused(tmp_path) -> None:
    paths = init_certs(tmp_path / "certs")
    paths.ca_key.rename(paths.directory / "ca.key")
    with pytest.raises(ValueError, match="move it to .*certs-ca-key/ca.key"):
        tls_pair(paths)
