"""Canary rollouts: a new version of a policy goes first to a share of the robots that run it (``--canary``), the
others keep the version it would replace (the incumbent); the two are compared on the episodes the robots finish
(``cloud.gateway.canary_rule``), and the new version is then promoted (every robot gets it) or rolled back (its
canary robots go back to the incumbent, and it is never sent again). An operator can decide either by hand.

``Rollouts.version_for`` is the one place that chooses which version a robot gets (``PolicyPusher``'s chooser).
Versions published while a rollout is in progress wait for it; when it ends, the newest of them starts the next.
A rollback goes down the authenticated tunnel as ``PolicyRollback`` before the incumbent's pieces: an edge applies an
older version only then, and only one the learner signed. The records live in the registry
(``cloud.data.rollout_records``), so a restarted gateway carries on and a dashboard can show them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Protocol

from cloud.data.episodes import EpisodeRecord
from cloud.data.rollout_records import (
    CANARY,
    PROMOTED,
    ROLLED_BACK,
    PolicyRollouts,
    RolloutRecord,
    load_rollouts,
    save_rollouts,
)
from cloud.data.version_registry import PolicyRegistry, PolicyVersion
from cloud.gateway.canary_rule import ArmCounts, Verdict, judge
from cloud.gateway.config import GatewayConfig
from cloud.gateway.sessions import Session

log = logging.getLogger("fleetloop.gateway")


class EpisodeSource(Protocol):
    """What a rollout reads of the gateway's store (an ``EpisodeStore`` or a ``SharedPartition``)."""

    def datasets(self) -> list[str]: ...

    def episodes(self, dataset: str) -> list[EpisodeRecord]: ...


def counted(episode: EpisodeRecord) -> bool:
    """Whether a version's numbers count the episode: finished, and not discarded by a person."""
    return episode.done and not episode.discarded


def arm_counts(episodes: list[EpisodeRecord], version: int) -> ArmCounts:
    """The finished, kept episodes that ``version`` started (as ``fleetloop.summary`` counts them): those that
    succeeded with no intervention, and those with one."""
    mine = [e for e in episodes if counted(e) and e.first_policy_version == version]
    autonomous = sum(1 for e in mine if e.success and e.intervention_steps == 0)
    return ArmCounts(len(mine), autonomous, sum(1 for e in mine if e.intervention_steps))


class Rollouts:
    """The canary rollouts of every policy the gateway's robots run (``sessions`` is the gateway's)."""

    def __init__(
        self, config: GatewayConfig, registry: PolicyRegistry, store: EpisodeSource, sessions: Mapping[str, Session]
    ) -> None:
        self.config = config
        self.registry = registry
        self.store = store
        self.sessions = sessions
        self._policies: dict[str, PolicyRollouts] = {}
        self._described: dict[tuple[str, int], PolicyVersion] = {}
        self._waiting: dict[str, int] = {}  # by policy: the newest version said to wait, so it is said once

    def rollouts(self, name: str) -> PolicyRollouts:
        if name not in self._policies:
            self._policies[name] = load_rollouts(self.registry, name)
        return self._policies[name]

    def _robots(self, name: str) -> list[Session]:
        """The connected robots that run ``name`` on their own (weights, not remote inference)."""
        return [s for s in self.sessions.values() if s.policy_name == name and name in s.receives() and not s.closed]

    def version_for(self, session: Session, latest: PolicyVersion) -> PolicyVersion | None:
        """The version of ``latest``'s policy that ``session`` gets now (None: nothing, e.g. all rolled back)."""
        name = latest.policy_name
        if name != session.policy_name:  # an outcome classifier's versions go out as they are published
            return latest
        rollouts = self.rollouts(name)
        if not self.config.canary:  # off: the newest, unless a canary (when they were on) rolled it back
            if rollouts.rolled_back(latest.version) and rollouts.incumbent:
                return self._describe(name, rollouts.incumbent)
            return latest
        self._begin(rollouts, latest)
        active = rollouts.active
        if active is not None and self._in_canary(active, session):
            return latest if latest.version == active.version else self._describe(name, active.version)
        if rollouts.incumbent == 0:
            return None
        return latest if latest.version == rollouts.incumbent else self._describe(name, rollouts.incumbent)

    def _describe(self, name: str, version: int) -> PolicyVersion | None:
        """A version's registry record, read once (every robot on the incumbent is offered the same one)."""
        key = (name, version)
        if key not in self._described:
            found = self.registry.describe(name, version)
            if found is None:
                return None
            self._described[key] = found
        return self._described[key]

    def role(self, robot_id: str) -> str:
        """A robot's part in a rollout now, for the dashboard: "canary", "incumbent" (its policy has a canary
        running on other robots) or ""."""
        session = self.sessions.get(robot_id)
        rollouts = self._policies.get(session.policy_name) if self.config.canary and session is not None else None
        active = rollouts.active if rollouts is not None else None
        if active is None:
            return ""
        return "canary" if robot_id in active.canary_robots else "incumbent"

    def canary_members(self) -> dict[str, tuple[str, int]]:
        """The robots running a canary now, each with its policy and the version it tries (for the fleet views)."""
        active = [(name, r.active) for name, r in self._policies.items() if r.active is not None]
        return {rid: (name, record.version) for name, record in active for rid in record.canary_robots}

    def _begin(self, rollouts: PolicyRollouts, latest: PolicyVersion) -> None:
        """Starts a rollout for ``latest`` when it is new (or makes the first version the incumbent)."""
        name, number = rollouts.policy_name, latest.version
        seen = max([rollouts.incumbent, *(r.version for r in rollouts.records)])
        if number <= seen:
            return
        if rollouts.incumbent == 0:  # nothing to compare with: the first version goes to every robot
            why = "first version" if number == 1 else "newest version when canary rollouts began"
            rollouts.records.append(RolloutRecord(number, 0, PROMOTED, started_unix=time.time(), decided_by=why))
            rollouts.incumbent = number
            save_rollouts(self.registry, rollouts)
            log.info("policy %s v%d goes to every robot (%s: nothing to compare it with)", name, number, why)
            return
        active = rollouts.active
        if active is not None:
            if self._waiting.get(name) != number:
                self._waiting[name] = number
                log.info("policy %s v%d waits: the canary of v%d is still running", name, number, active.version)
            return
        rollouts.records.append(RolloutRecord(number, rollouts.incumbent, CANARY, started_unix=time.time()))
        save_rollouts(self.registry, rollouts)
        robots = len(self._robots(name))
        log.info(
            "policy %s v%d published: canary on %d of %d robot(s) (--canary %g); the others keep v%d until it is "
            "judged over %d episodes each",
            name,
            number,
            self.config.canary_robots(robots) if robots else 0,
            robots,
            self.config.canary,
            rollouts.incumbent,
            self.config.canary_episodes,
        )

    def _in_canary(self, active: RolloutRecord, session: Session) -> bool:
        """Whether ``session`` runs the canary: a member, or one that joins while fewer than the share run it."""
        rid = session.resource.id
        if rid in active.canary_robots:
            return True
        robots = self._robots(session.policy_name)
        running = sum(1 for s in robots if s.resource.id in active.canary_robots)
        if running >= self.config.canary_robots(max(len(robots), 1)):
            return False
        active.canary_robots.append(rid)
        save_rollouts(self.registry, self.rollouts(session.policy_name))
        log.info("%s joins the canary of %s v%d", rid, session.policy_name, active.version)
        return True

    async def watch(self) -> None:
        """Judges every rollout in progress, every ``canary_check_s``."""
        while True:
            await asyncio.sleep(self.config.canary_check_s)
            for name in [n for n, r in self._policies.items() if r.active is not None]:
                try:
                    await self._judge(name)
                except Exception:  # one policy's records must not stop the others' rollouts
                    log.exception("cannot judge the canary of policy %s; retrying", name)

    async def _judge(self, name: str) -> None:
        rollouts = self.rollouts(name)
        active = rollouts.active
        if active is None:
            return
        names = {s.resource.capabilities.embodiment for s in self._robots(name)} | {name}  # on the loop: sessions
        canary, incumbent = await asyncio.to_thread(self._counts, names, active.version, active.incumbent)
        verdict = judge(canary, incumbent, self.config.canary_episodes, self.config.max_canary_episodes)
        if verdict.decision == "wait":
            if asdict(canary) != active.canary_counts or asdict(incumbent) != active.incumbent_counts:
                self._note(active, canary, incumbent, verdict)
                save_rollouts(self.registry, rollouts)
            return
        self._note(active, canary, incumbent, verdict)
        self.decide(name, active.version, verdict.decision, "rule", verdict.reason)

    def _counts(self, names: set[str], version: int, incumbent: int) -> tuple[ArmCounts, ArmCounts]:
        """Both arms' counts from the store's datasets ``names`` (those of the robots on the policy, and its own)."""
        datasets = set(self.store.datasets())
        episodes = [e for d in sorted(names & datasets) for e in self.store.episodes(d)]
        return arm_counts(episodes, version), arm_counts(episodes, incumbent)

    @staticmethod
    def _note(record: RolloutRecord, canary: ArmCounts, incumbent: ArmCounts, verdict: Verdict) -> None:
        record.canary_counts, record.incumbent_counts = asdict(canary), asdict(incumbent)
        record.reason = verdict.reason
        if verdict.success_diff is not None and verdict.intervention_diff is not None:
            record.success_diff = [round(verdict.success_diff.low, 4), round(verdict.success_diff.high, 4)]
            record.intervention_diff = [
                round(verdict.intervention_diff.low, 4),
                round(verdict.intervention_diff.high, 4),
            ]

    def decide(self, name: str, version: int, decision: str, by: str, reason: str) -> str:
        """Promotes or rolls back ``version`` of ``name`` (``by``: "rule" or "operator"); the decision in words.
        ValueError naming the field when it cannot be (no such rollout, nothing to roll back to)."""
        rollouts = self.rollouts(name)
        record = rollouts.record(version)
        if decision not in ("promote", "rollback"):
            raise ValueError(f"action: must be promote or rollback, got {decision!r}")
        if record is None or (
            record.state != CANARY and not (decision == "rollback" and version == rollouts.incumbent)
        ):
            state = "no rollout" if record is None else record.state
            raise ValueError(f"version: {name} v{version} is not a canary in progress ({state})")
        if record.state != CANARY and rollouts.active is not None:
            raise ValueError(f"version: the canary of {name} v{rollouts.active.version} runs on it; decide that first")
        if decision == "rollback" and record.incumbent == 0:
            raise ValueError(f"version: {name} v{version} has no earlier version to go back to")
        record.decided_unix, record.decided_by = time.time(), by
        record.reason = (
            reason if by == "rule" else f"by an operator ({reason}); last numbers: {record.reason or 'none'}"
        )
        if decision == "promote":
            record.state, rollouts.incumbent = PROMOTED, version
            words = f"policy {name} v{version} promoted ({record.reason}): every robot gets it"
        else:
            record.state, rollouts.incumbent = ROLLED_BACK, record.incumbent
            back = self._roll_back_robots(name, version, rollouts.incumbent, record.reason)
            words = (
                f"policy {name} v{version} rolled back ({record.reason}): {back} robot(s) go back to "
                f"v{rollouts.incumbent}, and v{version} is never sent again"
            )
        save_rollouts(self.registry, rollouts)
        (log.info if decision == "promote" else log.warning)("%s", words)
        self.offer_all(name)
        return words

    def _roll_back_robots(self, name: str, version: int, to: int, reason: str) -> int:
        target = self._describe(name, to)
        if target is None:
            raise ValueError(f"version: v{to} of {name}, the version to go back to, is no longer in the registry")
        sessions = [s for s in self.sessions.values() if name in s.subscriptions]
        return sum(s.roll_back(version, target, f"rolled back: {reason}") for s in sessions)

    def offer_all(self, name: str) -> None:
        """Offers every robot on ``name`` what it should run now (a newer version waiting starts its canary)."""
        latest = self.registry.latest(name)
        if latest is None:
            return
        for session in self._robots(name):
            chosen = self.version_for(session, latest)
            if chosen is not None and session.may_run(name):
                session.offer_version(chosen)
