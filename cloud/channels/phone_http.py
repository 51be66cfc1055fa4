"""The phone page over plain HTTP(S) on the phone channel's port: a GET without a websocket upgrade gets the
page's files (``phone_page/``) and, over TLS, the CA certificate a phone installs to trust the cloud. Other pages
(a robot's takeover page) are served on the same port as ``PageRoute``s."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from cloud.security.certs import ca_fingerprint

PAGE_DIR = Path(__file__).with_name("phone_page")
CA_PATH = "/phone/ca.pem"  # over TLS: the CA certificate (public), for a phone to install and trust
CA_MARK = "<!-- the CA -->"  # where the page tells how to trust the cloud, when it is served over TLS
PAGE_FILES = {  # URL path -> (file, content type)
    "/phone": ("index.html", "text/html; charset=utf-8"),
    "/phone/": ("index.html", "text/html; charset=utf-8"),
    "/phone/phone.js": ("phone.js", "text/javascript; charset=utf-8"),
}


class PageRoute(Protocol):
    """Another page on the phone channel's port: its GETs and its websocket connections, by path."""

    title: str  # what it is, for the log: "robot takeover pages"
    path_hint: str  # where, e.g. "/takeover/<robot id>"

    def handles(self, path: str) -> bool:
        """Whether a request for ``path`` (query included) is this route's."""
        ...

    def page(self, connection: ServerConnection, request: Request) -> Response:
        """The answer to a plain GET."""
        ...

    async def serve(self, connection: ServerConnection) -> None:
        """One websocket connection, until it closes."""
        ...


def file_response(file: Path, content_type: str) -> Response:
    return body_response(file.read_bytes(), content_type)


def body_response(body: bytes, content_type: str) -> Response:
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    )
    return Response(200, "OK", headers, body)


def page_response(connection: ServerConnection, request: Request, tls_ca: Path | None) -> Response | None:
    """The page file a plain GET asks for (404 for anything else); None for an upgrade, which goes on to the
    websocket handshake."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    path = request.path.split("?", 1)[0]
    if path == CA_PATH and tls_ca is not None:
        file, content_type = tls_ca, "application/x-x509-ca-cert"
    elif path in PAGE_FILES:
        name, content_type = PAGE_FILES[path]
        file = PAGE_DIR / name
        if name == "index.html" and tls_ca is not None:
            return body_response(_with_ca(file.read_text(), tls_ca).encode(), content_type)
    else:
        return connection.respond(404, "not found: the phone page is at /phone\n")
    return file_response(file, content_type)


def _with_ca(page: str, tls_ca: Path) -> str:
    """The page with where to get the CA and its fingerprint, to compare with what the cloud printed: a ca.pem
    swapped on its way to the phone has another fingerprint."""
    trust = (
        f'<div id="trust">Trust this cloud: install <a href="{CA_PATH}">its CA certificate</a> once. '
        f'Its SHA-256 fingerprint is <code id="ca-fingerprint">{ca_fingerprint(tls_ca)}</code>; it must match the '
        "one the cloud printed beside the pairing QR code.</div>"
    )
    return page.replace(CA_MARK, trust)
