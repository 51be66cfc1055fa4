"""Policy pushes: the registry is watched for new versions, each edge is offered the newest one of each name it
receives (its policy, its outcome classifier: ``Session.receives``) that it may run, and an update goes down its
tunnel in chunks: a delta against the version it holds of that name when that is smaller, else a snapshot.
Weights, wire states and built updates are cached: edges on one version share them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloud.data.version_registry import PolicyRegistry, PolicyVersion, Publishing
from cloud.gateway.config import GatewayConfig
from cloud.gateway.lru_cache import LruCache
from cloud.gateway.sessions import Session, Subscription
from cloud.gateway.snapshot_stream import PublishAbandoned, SnapshotSource, SnapshotStream
from policies.signing import UnsignedVersion
from policies.updates import WireState, build_update, delta_names
from policies.version_digest import digest_of
from protocol import tunnel_pb2 as pb
from protocol.policy_chunks import policy_pieces
from protocol.sanitize import printable

log = logging.getLogger("fleetloop.gateway")


@dataclass(frozen=True)
class Pieces:
    """An update as the serialized messages that carry it (``protocol.policy_chunks``), shared by every edge: cut
    already, or cut as its file is read (a full snapshot: ``SnapshotStream``)."""

    pieces: list[bytes] | SnapshotStream
    kind: str  # "full" | "delta"
    base_version: int
    total_bytes: int

    async def each(self) -> AsyncIterator[bytes]:
        if isinstance(self.pieces, SnapshotStream):
            async for piece in self.pieces.pieces():
                yield piece
        else:
            for piece in self.pieces:
                yield piece

    @property
    def failed(self) -> bool:
        return isinstance(self.pieces, SnapshotStream) and self.pieces.error is not None


class VersionChooser(Protocol):
    """Which version of a policy a robot gets when ``latest`` is the newest published (canary rollouts:
    ``cloud.gateway.rollouts``); None: none for now."""

    def version_for(self, session: Session, latest: PolicyVersion) -> PolicyVersion | None: ...


class PolicyPusher:
    """Offers new versions to the ``sessions`` (shared with the gateway, which adds and removes them) and sends
    each session the newest version it was offered (or the one ``chooser`` picks for it)."""

    def __init__(
        self,
        config: GatewayConfig,
        registry: PolicyRegistry,
        sessions: Mapping[str, Session],
        chooser: VersionChooser | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.sessions = sessions
        self.chooser = chooser
        # Keyed by (policy, version) or (policy, version, base version); each is shared by all edges.
        self._weights: LruCache[tuple[str, int], bytes] = LruCache(1)  # the last version read
        self._wire_states: LruCache[tuple[str, int], WireState] = LruCache(3)  # a target and a base or two
        self._updates: LruCache[tuple[str, int, int], Pieces] = LruCache(4)  # edges on one base share one
        self._streams: LruCache[tuple[str, int], SnapshotStream] = LruCache(4)  # full snapshots as they are read
        self._running: set[asyncio.Task] = set()
        self._announced: dict[str, int] = {}  # by name: the newest version announced, published or in flight
        self._recorded: dict[str, int] = {}  # by name: the newest version seen published
        self._abandoned: set[tuple[str, Publishing]] = set()  # publishes whose file stopped growing

    def offer_latest(self, session: Session, policy_name: str) -> None:
        """Offers the session the newest published version of ``policy_name``, if there is one."""
        latest = self.registry.latest(policy_name)
        if latest is not None:
            self._offer_to(session, latest)

    def _offer_to(self, session: Session, latest: PolicyVersion) -> None:
        """The one place that chooses which version a robot is offered."""
        chosen = latest if self.chooser is None else self.chooser.version_for(session, latest)
        if chosen is not None:
            session.offer_version(chosen)

    async def watch_registry(self) -> None:
        # The learner signs versions for bfloat16 only once a gateway says it sends that (a cast and a hash saved).
        try:
            await asyncio.to_thread(self.registry.sends_in, self.config.wire_dtype)
        except OSError as err:
            log.warning(
                "cannot tell the learner that versions travel as %s (%s): they travel as float32",
                self.config.wire_dtype,
                err,
            )
        loop, changed = asyncio.get_running_loop(), asyncio.Event()

        def wake() -> None:  # a publish in this process: look now, not at the next poll
            with contextlib.suppress(RuntimeError):  # the loop is closed: this gateway stopped
                loop.call_soon_threadsafe(changed.set)

        stop_waking = self.registry.on_change(wake)
        try:
            while True:
                changed.clear()
                for policy_name in {name for s in self.sessions.values() for name in s.receives()}:
                    try:
                        await self._look(policy_name)
                    except Exception:  # one unreadable policy must not stop the pushes of all the others
                        log.exception("cannot read the registry entry of policy %s; retrying", policy_name)
                with contextlib.suppress(TimeoutError):  # other processes' publishes are seen at the next look
                    await asyncio.wait_for(changed.wait(), self.config.registry_poll_s)
        finally:
            stop_waking()

    async def _look(self, name: str) -> None:
        """Announces a newly published version of ``name``, or one whose file is being written now (a float32
        snapshot is sent as it is written; its last piece waits until the version is published)."""
        latest = await asyncio.to_thread(self.registry.latest, name)
        if latest is not None and latest.version > self._recorded.get(name, 0):
            self._recorded[name] = latest.version
            if latest.version > self._announced.get(name, 0):
                self._announced[name] = latest.version
                await self._announce(latest)
            else:  # sent while it was written: edges that connected since are offered it now
                self._offer(latest)
            return
        if self.config.wire_dtype != "float32":
            return
        publishing = await asyncio.to_thread(self.registry.publishing, name)
        if publishing is None or publishing.version <= self._announced.get(name, 0):
            return
        if (name, publishing) in self._abandoned:
            return
        self._announced[name] = publishing.version
        in_flight = PolicyVersion(name, publishing.version, "", publishing.size_bytes, time.time())
        await self._announce(in_flight, publishing)

    def _offer(self, version: PolicyVersion) -> list[Session]:
        """Offers ``version`` to every edge that receives its name and may run it; returns them."""
        name = version.policy_name
        targets = [s for s in self.sessions.values() if name in s.receives() and s.may_run(name)]
        for session in targets:
            self._offer_to(session, version)
        return targets

    async def _announce(self, latest: PolicyVersion, publishing: Publishing | None = None) -> None:
        """Offers a newly published version to the edges that receive its name, once its file is checked against
        the learner's signature: a refused version is logged once as refused, every edge keeps what it runs."""
        name = latest.policy_name
        targets = [s for s in self.sessions.values() if name in s.receives() and s.may_run(name)]
        try:
            if self.config.wire_dtype == "float32":  # its header checked; its pieces follow as the file is read
                await self._stream(latest, publishing).header_checked
            else:
                await self._read_weights(latest)  # cached: the sends that follow read it from here
        except PublishAbandoned as err:
            log.warning(
                "the publish of %s v%d did not finish (%s); nothing of it is applied", name, latest.version, err
            )
            return
        except (UnsignedVersion, OSError, ValueError) as err:  # unsigned, gone or unreadable: sent to no one
            reason = printable(str(err))
            log.error(
                "policy %s v%d is in the registry but refused (%s); not sent to any edge, %d keep what they run",
                name,
                latest.version,
                reason,
                len(targets),
            )
            for session in targets:
                session.subscription(name).keep_off(name, latest.version, reason)
            return
        state = "being published" if publishing else "published"
        log.info("policy %s v%d %s; pushing to %d edge(s)", name, latest.version, state, len(targets))
        self._offer(latest)

    def _stream(self, version: PolicyVersion, publishing: Publishing | None = None) -> SnapshotStream:
        """The full snapshot of ``version`` as it is read (from its growing file while ``publishing``), started once
        and shared; a stream that failed is started afresh."""
        key = (version.policy_name, version.version)
        stream = self._streams.get(key)
        if stream is not None and stream.error is None:
            return stream
        verifier = self.registry.verifier
        if verifier is None:
            raise UnsignedVersion(f"{version.policy_name} v{version.version}: no learner key to check it against")
        local = self.registry.local
        final = self.registry.path(*key) if local else Path(str(self.registry.root), *map(str, key))  # for messages
        source = SnapshotSource(
            *key,
            path=publishing.path if publishing else final,
            total_bytes=publishing.size_bytes if publishing else version.size_bytes,
            growing=publishing is not None,
            durable=lambda: self._published(version.policy_name, version.version),
            final_path=final,
            stalled_s=self.config.publish_stalled_s,
            read_whole=None if local else lambda: self.registry.read(*key),
        )
        stream = SnapshotStream(source, self.config.policy_chunk_bytes, version.sha256)
        self._streams.put(key, stream)
        task = asyncio.create_task(self._run_stream(stream, verifier, publishing))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return stream

    async def _run_stream(self, stream: SnapshotStream, verifier, publishing: Publishing | None) -> None:
        await stream.run(verifier)
        name, version = stream.source.policy_name, stream.source.version
        if publishing is not None and isinstance(stream.error, PublishAbandoned):
            self._abandoned.add((name, publishing))  # a later publish of this number is announced afresh
            self._announced[name] = min(self._announced.get(name, 0), version - 1)

    async def _published(self, name: str, version: int) -> PolicyVersion:
        """The registry's record of ``version`` once it is published (its file fsynced), polled while it is not."""
        deadline = time.monotonic() + self.config.publish_stalled_s
        while True:
            latest = await asyncio.to_thread(self.registry.latest, name)
            if latest is not None and latest.version == version:
                return latest
            if latest is not None and latest.version > version:
                record = await asyncio.to_thread(self.registry.describe, name, version)
                if record is None:
                    raise PublishAbandoned(f"{name} v{version}: no record of it in the registry")
                return record
            if time.monotonic() > deadline:
                stalled = self.config.publish_stalled_s
                raise PublishAbandoned(f"{name} v{version}: written whole, but not recorded within {stalled:.0f} s")
            await asyncio.sleep(min(self.config.registry_poll_s, 0.005))

    async def _read_weights(self, version: PolicyVersion) -> bytes:
        """A version's file, checked against the learner's signature (a file anyone else wrote is refused)."""
        key = (version.policy_name, version.version)
        stream = self._streams.get(key)
        if stream is not None and stream.error is None:  # read as it is sent: no second read
            async for _ in stream.pieces():
                pass

            def joined() -> bytes:
                weights = b"".join(stream.chunks)
                if not stream.tensors_checked:  # only its header was: a delta or bf16 state is built from it
                    self.registry.check(weights, *key)
                return weights

            return await self._weights.get_or_build(key, lambda: asyncio.to_thread(joined))
        return await self._weights.get_or_build(key, lambda: asyncio.to_thread(self.registry.read_verified, *key))

    def on_rejected(self, session: Session, rejected: pb.PolicyRejected) -> None:
        """The edge could not apply an update. A delta (e.g. on a base it dropped) is followed by one full snapshot;
        a version it refused whole (or that misbehaved on the robot) is never offered to that edge again, so a
        version no edge can build is sent once, not in a loop."""
        held = session.subscriptions.get(rejected.policy_name)
        if held is None:  # a name this edge was never sent: nothing to resend
            log.warning("%s rejected %s, which it was never sent", session.resource.id, rejected.policy_name)
            return
        if rejected.version in held.bad_versions:
            return  # said once already
        if rejected.bad or rejected.version == held.full_sent:
            self.keep_off(session, held, rejected.policy_name, rejected.version, rejected.reason)
            return
        log.warning(
            "%s could not apply %s v%d (%s); sending a full snapshot",
            session.resource.id,
            rejected.policy_name,
            rejected.version,
            printable(rejected.reason),
        )
        held.needs_full = True
        held.sent_version = min(held.sent_version, held.applied_version)
        held.offer = None  # offer the newest version again, from scratch
        self.offer_latest(session, rejected.policy_name)

    @staticmethod
    def keep_off(
        session: Session, held: Subscription, name: str, version: int, reason: str, by_edge: bool = True
    ) -> None:
        """``version`` of ``name`` is not offered to ``session`` again; it keeps what it runs (logged once).
        ``by_edge``: the edge refused it; else the gateway did (e.g. a file the learner did not sign)."""
        held.keep_off(name, version, printable(reason))
        who = f"{session.resource.id} refused" if by_edge else f"not sending {session.resource.id}"
        log.error(
            "%s %s v%d (%s); it keeps v%d, and a newer version will reach it when one is published",
            who,
            name,
            version,
            printable(reason),
            held.applied_version,
        )

    async def _wire_state(self, version: PolicyVersion) -> WireState:
        async def build() -> WireState:
            weights = await self._read_weights(version)
            return await asyncio.to_thread(WireState.from_weights, weights, version.version, self.config.wire_dtype)

        return await self._wire_states.get_or_build((version.policy_name, version.version), build)

    async def _architecture(self, version: PolicyVersion) -> tuple[str, str] | None:
        """A version's policy type and config, from its file's header alone; None when it is gone."""
        stream = self._streams.get((version.policy_name, version.version))
        if stream is not None and stream.metadata is not None:  # a header checked already (its file may be growing)
            return stream.metadata.get("type", ""), stream.metadata.get("config", "")
        try:
            _, metadata = await asyncio.to_thread(self.registry.verified_header, version.policy_name, version.version)
        except (FileNotFoundError, ValueError):  # gone, or not the learner's (refused where it is read whole)
            return None
        return metadata.get("type", ""), metadata.get("config", "")

    async def _delta_base(self, version: PolicyVersion, base_version: int) -> tuple[WireState, WireState] | None:
        """(target, base) wire states when a delta from ``base_version`` can carry ``version``, else None."""
        if not base_version or not 0 < version.version - base_version <= self.config.max_delta_versions:
            return None
        base = PolicyVersion(version.policy_name, base_version, "", 0, 0.0)
        if await self._architecture(base) != await self._architecture(version):
            return None  # another architecture (or pruned): seen from the headers, so nothing is hashed
        if await self._changed_too_much(version, base):
            return None  # seen while its file is read: its snapshot goes out at once, not after the whole file
        target = await self._wire_state(version)
        try:
            base_state = await self._wire_state(base)
        except FileNotFoundError:  # pruned from the registry since
            return None
        if delta_names(target, base_state, self.config.max_delta_fraction) is None:
            return None  # most of the bytes changed
        return target, base_state

    async def _changed_too_much(self, version: PolicyVersion, base: PolicyVersion) -> bool:
        """While ``version``'s float32 snapshot is still being read: whether enough of its tensors differ from
        ``base``'s already that no delta can carry it."""
        stream = self._streams.get((version.policy_name, version.version))
        if stream is None or stream.done or self.config.wire_dtype != "float32":
            return False
        try:
            base_state = await self._wire_state(base)
        except FileNotFoundError:
            return True  # pruned: no delta against it either
        return await stream.changed_past(base_state.digests, self.config.max_delta_fraction)

    async def _update_for(self, version: PolicyVersion, base_version: int) -> Pieces:
        """The update's pieces: a delta against what the edge holds when possible, else a snapshot."""
        key = (version.policy_name, version.version, base_version)
        cached = self._updates.get(key)
        if cached is not None and cached.failed:  # e.g. a publish that never finished, then published again
            self._updates.discard(key)
        return await self._updates.get_or_build(key, lambda: self._cut_update(version, base_version))

    async def _cut_update(self, version: PolicyVersion, base_version: int) -> Pieces:
        delta_from = await self._delta_base(version, base_version)
        if delta_from is None and self.config.wire_dtype == "float32":
            return await self._snapshot(version)
        target, base_state = delta_from or (await self._wire_state(version), None)
        built = await asyncio.to_thread(build_update, target, base_state, self.config.max_delta_fraction)
        digest = await asyncio.to_thread(digest_of, built.payload)
        return await self._pieces(version, built.payload, digest, built.kind, built.base_version)

    async def _snapshot(self, version: PolicyVersion) -> Pieces:
        """A float32 snapshot is the registry file as it is (no second serialization and hash of the whole model),
        cut into pieces as it is read and checked against the learner's signature in the same pass."""
        return Pieces(self._stream(version), "full", 0, version.size_bytes)

    async def _pieces(self, version: PolicyVersion, data: bytes, digest: str, kind: str, base_version: int) -> Pieces:
        template = pb.PolicyChunk(
            policy_name=version.policy_name,
            version=version.version,
            sha256=digest,  # policies.version_digest
            published_mono_ns=time.monotonic_ns(),  # when its pieces were made
            kind=kind,
            base_version=base_version,
        )
        pieces = await asyncio.to_thread(policy_pieces, template, data, self.config.policy_chunk_bytes)
        return Pieces(pieces, kind, base_version, len(data))

    async def send_policies(self, session: Session) -> None:
        """Pushes the newest version offered of each name it receives; versions superseded before they were sent
        are skipped."""
        while not session.closed:
            await session.offered.wait()
            session.offered.clear()
            for held in list(session.subscriptions.values()):
                version = held.offer
                if version is not None and version.version > held.sent_version and not session.closed:
                    try:
                        await self._send_version(session, held, version)
                    except PublishAbandoned as err:  # nothing of it completes on the edge; a later publish is offered
                        log.warning(
                            "not sending %s v%d to %s: %s",
                            version.policy_name,
                            version.version,
                            session.resource.id,
                            printable(str(err)),
                        )
                        held.offer = None
                        self.offer_latest(session, version.policy_name)  # recorded meanwhile: sent from its file
                    except (UnsignedVersion, OSError, ValueError) as err:  # unsigned, gone or unreadable: not sent
                        held.sent_version = max(held.sent_version, version.version)
                        self.keep_off(session, held, version.policy_name, version.version, str(err), by_edge=False)

    async def _send_version(self, session: Session, held: Subscription, version: PolicyVersion) -> None:
        base_version = 0 if held.needs_full else held.applied_version
        update = await self._update_for(version, base_version)
        held.needs_full = False
        if update.kind == "full":
            held.full_sent = version.version
        if update.kind == "delta":
            log.info(
                "pushing %s v%d to %s as a delta on v%d: %.3f MB instead of %.3f MB",
                version.policy_name,
                version.version,
                session.resource.id,
                update.base_version,
                update.total_bytes / 1e6,
                version.size_bytes / 1e6,
            )
        async for piece in update.each():
            await session.bulk_credits.acquire()
            session.send(piece)
        held.sent_version = version.version
