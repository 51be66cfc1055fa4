"""`fleetloop certs init`: a CA and a server certificate that TLS clients accept for the named hosts."""

from __future__ import annotations

import os

import pytest
from cryptography import x509

from cloud.security.certs import init_certs, server_hosts


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
