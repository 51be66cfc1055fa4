"""What a failed call to the cloud means, in words a person can act on: gRPC reports an unresolvable host, a
certificate that does not name the dialled address and a closed port all as UNAVAILABLE; only the details differ."""

from __future__ import annotations

import grpc

from protocol.channel import target_host

# (words in grpc's details, what they mean); the first match wins. {host} and {target} are filled in.
_UNAVAILABLE_CAUSES = (
    (("errors resolving", "DNS resolution failed", "hostname lookup"), "{host} does not resolve to an address"),
    (
        ("Hostname Verification", "Peer name", "not in peer certificate"),
        "the cloud's certificate does not name {host} (dial a name it holds, or reissue it with "
        "`fleetloop certs init --host {host} --force`)",
    ),
    (
        ("certificate signature failure", "CERTIFICATE_VERIFY_FAILED", "Tls handshake failed", "Handshake failed"),
        "the cloud's certificate is not signed by the CA given with --ca",
    ),
    (("Connection refused",), "nothing listens at {target} (is the cloud running?)"),
)


def credential_refused(err: grpc.RpcError) -> bool:
    """The cloud answered, and refused the call's device credential."""
    return err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def link_failure(target: str, err: grpc.RpcError) -> str:
    """Why the call to ``target`` failed, as a phrase: the credential refused, or why it cannot be reached."""
    code = err.code()
    details = err.details() or ""
    if credential_refused(err):
        return f"the cloud refused the credential: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        for words, meaning in _UNAVAILABLE_CAUSES:
            if any(word in details for word in words):
                return meaning.format(host=target_host(target), target=target)
    return f"{code.name}: {details}" if details else code.name
