"""What a gateway is told at start: its address, credentials, limits, and how it writes, pushes and schedules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, InstanceOf, model_validator

from cloud.gateway.fleet import Task
from cloud.security.devices import DeviceRegistry
from hal.config import CodeConfig, Items, Name, invalid
from protocol.limits import MAX_HELLO_BYTES
from protocol.steps import MAX_BATCH_BYTES, MAX_DECODED_BYTES

GRPC_MESSAGE_LIMIT = 64 * 1024 * 1024
# What an EdgeMessage adds around its largest body (a batch, a hello): a tag and a length.
MESSAGE_FRAMING_BYTES = 64 << 10
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
    ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # gRPC's default waits 60 s for a ping's ack: a dead edge's stream would linger that long.
    ("grpc.http2.ping_timeout_ms", 10_000),
]


Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port (the server logs which it got)
Positive = Annotated[float, Field(gt=0)]
AtLeastOne = Annotated[int, Field(ge=1)]


class GatewayConfig(CodeConfig):
    model_config = ConfigDict(**CodeConfig.model_config, arbitrary_types_allowed=True)
    config_name = "gateway"

    host: Name = "127.0.0.1"
    port: Port = 7070
    # Device credentials; None (or no devices file) accepts any device, which the CLI allows on loopback only.
    devices: InstanceOf[DeviceRegistry] | None = None
    tls_cert: bytes | None = None  # PEM server certificate and key: serve TLS instead of plain text
    tls_key: bytes | None = Field(default=None, repr=False)
    max_batch_bytes: AtLeastOne = MAX_BATCH_BYTES
    wire_dtype: Literal["float32", "bfloat16"] = "float32"  # "bfloat16" halves the bytes of float weights
    # How a new dataset keeps its RGB cameras (cloud/gateway/cameras.py); an existing dataset keeps what it has.
    store_codec: Literal["auto", "raw", "h264", "av1"] = "auto"
    max_delta_versions: Annotated[int, Field(ge=0)] = 10  # an edge further behind gets a full snapshot
    # a delta bigger than this share of the model goes as a full snapshot
    max_delta_fraction: Annotated[float, Field(ge=0)] = 0.5
    # Group commit into the ingest log: append and fsync once this many rows wait...
    flush_rows: AtLeastOne = 1024
    # ...or this many bytes (what arrives during one fsync joins the next group, so groups grow with the load; a
    # small threshold keeps acks coming while an edge's window is still open)...
    flush_bytes: AtLeastOne = 4 << 20
    # Steps received but not yet durable in the ingest log, over all edges: past this, the gateway stops reading the
    # tunnels (HTTP/2 flow control then slows the edges, whose spools absorb it on disk) instead of growing memory.
    max_unwritten_bytes: AtLeastOne = 256 << 20
    # Steps acked (fsync'd in the ingest log) but not yet moved into the episode store, held in memory until the
    # compactor writes them: past this every tunnel waits, so a store slower than the wire pushes back.
    max_uncompacted_bytes: AtLeastOne = 512 << 20
    # One tunnel's share of what is not yet in the store (logged or not): a device that sends faster than the store
    # writes waits alone at its share, and the others go on. None: a quarter of max_uncompacted_bytes, so the last
    # bound takes four tunnels flooding at once.
    max_unwritten_bytes_per_tunnel: AtLeastOne | None = None
    # The folder on this machine's disk where acked batches wait for the store (cloud/data/ingest_log.py). None:
    # beside a store in a local folder (<store>/@ingest-log); a store on object storage needs one given.
    ingest_log: Path | None = None
    # ...or the oldest has waited this long. 0: at once; what arrives during one fsync forms the next group, so
    # groups still grow with the load, and an edge's window is never held back by a timer.
    flush_delay_s: Annotated[float, Field(ge=0)] = 0.0
    policy_chunk_bytes: AtLeastOne = 1 << 20
    registry_poll_s: Positive = 0.05  # reads one small JSON file per policy
    # A version sent while its file is written: given up when the file stops growing (or, whole, is not recorded)
    # for this long (its writer died); nothing of it is applied, and a later publish of its number is sent afresh.
    publish_stalled_s: Positive = 30.0
    hello_timeout_s: Positive = 10.0
    lost_after_s: Positive = 5.0  # a resource silent this long is lost and its task goes to another
    # none: the device records' tasks (cloud.gateway.tasks.record_tasks) when credentials are checked, else (open
    # loopback mode) one task per policy a robot asks for
    tasks: Items[InstanceOf[Task]] = ()
    # Canary rollouts (cloud/gateway/rollouts.py): 0 is off (every robot gets each new version at once); below 1 the
    # share of a policy's robots that try a new version first, 1 or more a number of robots.
    canary: Annotated[float, Field(ge=0)] = 0.0
    canary_episodes: AtLeastOne = 10  # finished episodes each arm needs before the rule decides
    canary_max_episodes: AtLeastOne | None = None  # canary episodes with no clear answer before it is rolled back
    canary_check_s: Positive = 1.0  # how often the rollouts in progress are judged
    # ---- bounds on what one device can make the gateway do (README "Bounds"): each refusal names its limit ----
    max_decoded_bytes: AtLeastOne = MAX_DECODED_BYTES  # what one message's arrays decode to, all together
    max_hello_bytes: AtLeastOne = MAX_HELLO_BYTES  # a stream's first message, refused unparsed past this
    decode_workers: AtLeastOne = 2  # threads that parse and decode large messages, off the event loop
    max_streams: AtLeastOne = 256  # tunnel streams open at once, in all
    max_pending_hellos: AtLeastOne = 32  # streams open that have not yet been admitted by their hello
    max_streams_per_device: AtLeastOne = 2  # streams of one device at once (a reconnect's, and the one it supersedes)
    max_streams_per_connection: AtLeastOne = 8  # HTTP/2 streams one TCP connection may multiplex
    max_inference_queue: AtLeastOne = 4  # remote-inference requests one tunnel may have waiting; more are refused
    # torch threads for each remote-inference pass; None: torch's default (one per core). On cores shared with the
    # gateway's own work or the learner, 1 keeps a batched pass from spinning against them.
    inference_threads: AtLeastOne | None = None

    @model_validator(mode="after")
    def _share_within_total(self) -> GatewayConfig:
        share = self.max_unwritten_bytes_per_tunnel
        if share is not None and share > self.max_uncompacted_bytes:
            raise invalid(
                f"{share} bytes is more than max_uncompacted_bytes ({self.max_uncompacted_bytes}), which all tunnels"
                " share",
                "max_unwritten_bytes_per_tunnel",
            )
        if self.max_uncompacted_bytes < self.flush_bytes:
            raise invalid(
                f"{self.max_uncompacted_bytes} bytes is less than flush_bytes ({self.flush_bytes}), one group commit",
                "max_uncompacted_bytes",
            )
        return self

    @model_validator(mode="after")
    def _canary_share_or_count(self) -> GatewayConfig:
        if self.canary >= 1 and not float(self.canary).is_integer():
            raise invalid(f"a share below 1 (0.25) or a whole number of robots (2), got {self.canary}", "canary")
        if self.canary_max_episodes is not None and self.canary_max_episodes < self.canary_episodes:
            raise invalid(
                f"{self.canary_max_episodes} is fewer than canary_episodes ({self.canary_episodes})",
                "canary_max_episodes",
            )
        return self

    @property
    def max_canary_episodes(self) -> int:
        """The canary episodes after which a rollout with no clear answer is rolled back (default 4 x the least)."""
        return self.canary_max_episodes or 4 * self.canary_episodes

    def canary_robots(self, robots: int) -> int:
        """How many of a policy's ``robots`` run a new version first: at least one, and one fewer than all when
        there are two or more (a canary of the whole fleet compares it only with the incumbent's past episodes)."""
        wanted = int(self.canary) if self.canary >= 1 else int(self.canary * robots)
        return max(1, min(wanted, robots - 1))

    @property
    def max_message_bytes(self) -> int:
        """The transport's limit on one EdgeMessage: the largest body it may carry, with its framing."""
        return max(self.max_batch_bytes, self.max_hello_bytes) + MESSAGE_FRAMING_BYTES

    def grpc_options(self) -> list[tuple[str, int]]:
        """The server's gRPC options: GRPC_OPTIONS with this gateway's receive and stream limits."""
        bounded = {
            "grpc.max_receive_message_length": self.max_message_bytes,
            "grpc.max_concurrent_streams": self.max_streams_per_connection,
        }
        return [(key, bounded.pop(key, value)) for key, value in GRPC_OPTIONS] + list(bounded.items())
