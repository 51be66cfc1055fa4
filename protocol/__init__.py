"""The wire contract both sides speak: the tunnel's messages and the array codec.

- ``tunnel.proto``  the messages and services (``tunnel_pb2*`` are generated from it)
- ``arrays``        the array codec: dtype + shape + raw bytes, never pickle
- ``steps``         columnar step batches and their schema
- ``video``         the camera codec: H.264 / AV1 / JPEG packets, one per frame, segments that decode alone
- ``policy_chunks`` a policy update as the serialized messages that carry it down a tunnel, made once
- ``person``        a person at a takeover page on the wire: commands, watch requests, live views, refusals
- ``limits``        size and count limits on every message an edge sends
- ``channel``       opening a channel to the cloud (TLS beyond loopback) and the bearer token
- ``link_errors``   what a failed call to the cloud means, in words
- ``sanitize``      a device's string made printable, one line and bounded before it reaches a log
- ``file_writes``   buffers written whole at a file offset (the edge's spool log, the cloud's logs and version files)
- ``incidents``     an unexpected failure logged under an incident id; the client hears only the id

The lowest layer: imports nothing of the project.
"""

# 2: a pushed version's digest is "tensors-sha256:..." (policies/version_digest.py), which an edge of 1 would take for
# a corrupt file and refuse every version: it hears at its hello that it must be upgraded instead.
PROTOCOL_VERSION = 2
