"""Where phones find the cloud: the address named in the pairing URL and the certificate the phone page is
served with (browsers give the camera and WebXR only to secure pages, and a phone is never on loopback)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from cloud.security.certs import DEFAULT_HOSTS, CertPaths, certs_problem, init_certs, server_hosts

log = logging.getLogger("fleetloop.phone")

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def lan_address() -> str:
    """This machine's address on its default route ("" without one). A UDP connect sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
            return probe.getsockname()[0]
        except OSError:
            return ""


def phone_url_host(given: str, listen_host: str, server_cert: Path | None, lan: str = "") -> str:
    """The host a phone dials, named in the pairing URL: ``given`` (--phone-url-host), else the listening host,
    else (listening on every interface) this machine's LAN address ``lan`` when the certificate names it, else
    the certificate's first name beyond loopback, else ``lan`` or this machine's name. A phone checks the
    certificate against that host: warn when the certificate does not name it."""
    names = server_hosts(server_cert) if server_cert is not None else []
    host = given or (listen_host if listen_host not in WILDCARD_HOSTS else "")
    if not host:
        beyond = [n for n in names if n not in DEFAULT_HOSTS]
        host = (lan if lan in beyond else "") or (beyond[0] if beyond else "") or lan or socket.gethostname()
        log.info("phones reach this cloud at %s (set --phone-url-host to name another address)", host)
    if names and host not in names:
        log.warning(
            "the pairing URL names %s, which the server certificate does not (it names %s): phones will refuse "
            "it; run `fleetloop certs init --host %s --force`",
            host,
            ", ".join(names),
            host,
        )
    return host


def phone_certs(certs: CertPaths, listen_host: str, url_host: str, lan: str) -> CertPaths:
    """``certs`` when `fleetloop certs init` made them, else made now (first start), naming loopback, the
    listening host, the pairing URL's host, this machine's LAN address and name. ValueError (saying what to run)
    for certificates an older fleetloop made: their CA has no name constraints."""
    if certs.exist():
        problem = certs_problem(certs)
        if problem:
            raise ValueError(f"--phone-port: {problem}")
    else:
        hosts = [url_host, listen_host, lan, socket.gethostname()]
        hosts = list(dict.fromkeys(h for h in hosts if h and h not in WILDCARD_HOSTS))
        init_certs(certs.directory, hosts=tuple(hosts))
        log.info(
            "made a CA and a server certificate for the phone page in %s (for %s); a phone installs %s once; "
            "the CA's key is in %s, which the cloud never reads: keep it offline",
            certs.directory,
            ", ".join(hosts),
            certs.ca,
            certs.ca_key,
        )
    return certs
