"""The phone page over plain HTTP(S) on the phone channel's port: a GET without a websocket upgrade gets the
page's files (``phone_page/``) and, over TLS, the CA certificate a phone installs to trust the cloud."""

from __future__ import annotations

from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

PAGE_DIR = Path(__file__).with_name("phone_page")
CA_PATH = "/phone/ca.pem"  # over TLS: the CA certificate (public), for a phone to install and trust
PAGE_FILES = {  # URL path -> (file, content type)
    "/phone": ("index.html", "text/html; charset=utf-8"),
    "/phone/": ("index.html", "text/html; charset=utf-8"),
    "/phone/phone.js": ("phone.js", "text/javascript; charset=utf-8"),
}


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
    else:
        return connection.respond(404, "not found: the phone page is at /phone\n")
    body = file.read_bytes()
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    )
    return Response(200, "OK", headers, body)
