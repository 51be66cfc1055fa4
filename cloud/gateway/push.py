"""Policy pushes: the registry is watched for new versions, each edge is offered the newest one of each name it
receives (its policy, its outcome classifier: ``Session.receives``) that it may run, and an update goes down its
tunnel in chunks: a delta against the version it holds of that name when that is smaller, else a snapshot.
Weights, wire states and built updates are cached: edges on one version share them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from cloud.data.version_registry import PolicyRegistry, PolicyVersion
from cloud.gateway.config import GatewayConfig
from cloud.gateway.lru_cache import LruCache
from cloud.gateway.sessions import Session, Subscription
from policies.signing import UnsignedVersion
from policies.updates import WireState, build_update, delta_names
from policies.weights import sha256_hex
from protocol import tunnel_pb2 as pb
from protocol.sanitize import printable

log = logging.getLogger("fleetloop.gateway")

type Update = tuple[bytes, str, str, int]  # payload, its sha256, kind ("full" or "delta"), base version


class PolicyPusher:
    """Offers new versions to the ``sessions`` (shared with the gateway, which adds and removes them) and sends
    each session the newest version it was offered."""

    def __init__(self, config: GatewayConfig, registry: PolicyRegistry, sessions: Mapping[str, Session]) -> None:
        self.config = config
        self.registry = registry
        self.sessions = sessions
        # Keyed by (policy, version) or (policy, version, base version); each is shared by all edges.
        self._weights: LruCache[tuple[str, int], bytes] = LruCache(1)  # the last version read
        self._wire_states: LruCache[tuple[str, int], WireState] = LruCache(3)  # a target and a base or two
        self._updates: LruCache[tuple[str, int, int], Update] = LruCache(8)  # edges on one base share one

    def offer_latest(self, session: Session, policy_name: str) -> None:
        """Offers the session the newest published version of ``policy_name``, if there is one."""
        latest = self.registry.latest(policy_name)
        if latest is not None:
            session.offer_version(latest)

    async def watch_registry(self) -> None:
        known: dict[str, int] = {}
        while True:
            for policy_name in {name for s in self.sessions.values() for name in s.receives()}:
                try:
                    latest = await asyncio.to_thread(self.registry.latest, policy_name)
                except Exception:  # one unreadable policy must not stop the pushes of all the others
                    log.exception("cannot read the registry entry of policy %s; retrying", policy_name)
                    continue
                if latest is None or latest.version <= known.get(policy_name, 0):
                    continue
                known[policy_name] = latest.version
                await self._announce(latest)
            await asyncio.sleep(self.config.registry_poll_s)

    async def _announce(self, latest: PolicyVersion) -> None:
        """Offers a newly published version to the edges that receive its name, once its file is checked against
        the learner's signature: a refused version is logged once as refused, every edge keeps what it runs."""
        name = latest.policy_name
        targets = [s for s in self.sessions.values() if name in s.receives() and s.may_run(name)]
        try:
            await self._read_weights(latest)  # cached: the sends that follow read it from here
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
        log.info("policy %s v%d published; pushing to %d edge(s)", name, latest.version, len(targets))
        for session in targets:
            session.offer_version(latest)

    async def _read_weights(self, version: PolicyVersion) -> bytes:
        """A version's file, checked against the learner's signature (a file anyone else wrote is refused)."""
        key = (version.policy_name, version.version)
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
        target = await self._wire_state(version)
        try:
            base_state = await self._wire_state(base)
        except FileNotFoundError:  # pruned from the registry since
            return None
        if delta_names(target, base_state, self.config.max_delta_fraction) is None:
            return None  # most of the bytes changed
        return target, base_state

    async def _update_for(self, version: PolicyVersion, base_version: int) -> Update:
        """(payload, sha256, kind, base version): a delta against what the edge holds when possible."""
        key = (version.policy_name, version.version, base_version)
        return await self._updates.get_or_build(key, lambda: self._build_update(version, base_version))

    async def _build_update(self, version: PolicyVersion, base_version: int) -> Update:
        delta_from = await self._delta_base(version, base_version)
        if delta_from is None and self.config.wire_dtype == "float32":
            # A float32 snapshot is the registry file as it is: no second serialization and hash of the whole
            # model (for a 50M-parameter policy, most of a second before the first chunk leaves).
            return await self._read_weights(version), version.sha256, "full", 0
        target, base_state = delta_from or (await self._wire_state(version), None)
        built = await asyncio.to_thread(build_update, target, base_state, self.config.max_delta_fraction)
        return built.payload, sha256_hex(built.payload), built.kind, built.base_version

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
                    except (UnsignedVersion, OSError, ValueError) as err:  # unsigned, gone or unreadable: not sent
                        held.sent_version = max(held.sent_version, version.version)
                        self.keep_off(session, held, version.policy_name, version.version, str(err), by_edge=False)

    async def _send_version(self, session: Session, held: Subscription, version: PolicyVersion) -> None:
        base_version = 0 if held.needs_full else held.applied_version
        data, sha256, kind, base_version = await self._update_for(version, base_version)
        held.needs_full = False
        if kind == "full":
            held.full_sent = version.version
        if kind == "delta":
            log.info(
                "pushing %s v%d to %s as a delta on v%d: %.2f MB instead of %.2f MB",
                version.policy_name,
                version.version,
                session.resource.id,
                base_version,
                len(data) / 1e6,
                version.size_bytes / 1e6,
            )
        published = time.monotonic_ns()
        step = self.config.policy_chunk_bytes
        for offset in range(0, max(len(data), 1), step):
            await session.bulk_credits.acquire()
            session.send(
                pb.CloudMessage(
                    policy=pb.PolicyChunk(
                        policy_name=version.policy_name,
                        version=version.version,
                        sha256=sha256,
                        total_bytes=len(data),
                        offset=offset,
                        data=data[offset : offset + step],
                        published_mono_ns=published,
                        kind=kind,
                        base_version=base_version,
                    )
                )
            )
        held.sent_version = version.version
