"""Canary rollouts as the registry keeps them: per policy, the incumbent (the version every robot may run) and one
record per version that went through a canary, in ``<registry>/<policy>/rollouts.json``.

The gateway writes them (``cloud.gateway.rollouts``) whenever a rollout starts or is decided, whole and renamed into
place, so a restarted gateway carries on where it was and a version rolled back is never pushed again; a dashboard
reads them with ``rollout_states``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

from cloud.data.version_registry import PolicyRegistry

log = logging.getLogger("fleetloop.registry")

ROLLOUTS = "rollouts.json"
CANARY, PROMOTED, ROLLED_BACK = "canary", "promoted", "rolled back"
STATES = (CANARY, PROMOTED, ROLLED_BACK)


@dataclass
class RolloutRecord:
    """One version's rollout: where it stands, on which robots it ran as a canary, and the decision's numbers."""

    version: int
    incumbent: int  # the version it was compared with (0: none; the first version goes to every robot)
    state: str = CANARY
    canary_robots: list[str] = field(default_factory=list)
    started_unix: float = 0.0
    decided_unix: float = 0.0
    decided_by: str = ""  # "rule", "operator", or why no canary ran ("first version")
    reason: str = ""  # the decision in words, with its numbers
    # Each arm's counts at the decision (or at the last look): episodes, autonomous, intervened.
    canary_counts: dict[str, int] = field(default_factory=dict)
    incumbent_counts: dict[str, int] = field(default_factory=dict)
    success_diff: list[float] = field(default_factory=list)  # 95% one-sided bounds of canary - incumbent
    intervention_diff: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state: must be one of {STATES}, got {self.state!r}")


@dataclass
class PolicyRollouts:
    """A policy's rollouts: its incumbent and its records, oldest first."""

    policy_name: str
    incumbent: int = 0
    records: list[RolloutRecord] = field(default_factory=list)

    def record(self, version: int) -> RolloutRecord | None:
        return next((r for r in self.records if r.version == version), None)

    @property
    def active(self) -> RolloutRecord | None:
        """The rollout in progress, if one is."""
        return next((r for r in reversed(self.records) if r.state == CANARY), None)

    def rolled_back(self, version: int) -> bool:
        record = self.record(version)
        return record is not None and record.state == ROLLED_BACK


def load_rollouts(registry: PolicyRegistry, policy_name: str) -> PolicyRollouts:
    """The policy's rollouts as last written; none yet (or an unreadable file, logged) is an empty history."""
    data = registry.read_note(policy_name, ROLLOUTS)
    if data is None:
        return PolicyRollouts(policy_name)
    try:
        raw = json.loads(data)
        records = [RolloutRecord(**r) for r in raw["records"]]
        return PolicyRollouts(policy_name, int(raw["incumbent"]), records)
    except (ValueError, TypeError, KeyError) as err:
        log.error("the rollout records of %s are unreadable (%s); starting them afresh", policy_name, err)
        return PolicyRollouts(policy_name)


def save_rollouts(registry: PolicyRegistry, rollouts: PolicyRollouts) -> None:
    data = {"incumbent": rollouts.incumbent, "records": [asdict(r) for r in rollouts.records]}
    registry.write_note(rollouts.policy_name, ROLLOUTS, json.dumps(data, indent=1).encode())


def rollout_states(registry: PolicyRegistry) -> dict[str, PolicyRollouts]:
    """Every policy's rollouts by name, as the registry holds them (for the dashboard)."""
    return {name: load_rollouts(registry, name) for name in registry.policies()}
