"""What the canary tests read and do on a fleet of ``sim:point_reach`` robots: publish a trained version with the
learner's key, the rollout records the gateway keeps in the registry, and which robots reported running a version."""

from __future__ import annotations

import json
import re

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from tests.e2e.fleet import Fleet
from tests.e2e.reach_versions import DATASET as POLICY
from tests.e2e.reach_versions import ReachVersions


def publish(fleet: Fleet, versions: ReachVersions, name: str) -> int:
    """Publishes the trained version ``name`` (early, good, corrupted) with the learner's key, as the learner would."""
    weights = getattr(versions, name)
    return signing_registry(DataLayout(fleet.root / "data")).publish(POLICY, weights, note=name).version


def rollouts(fleet: Fleet) -> dict:
    path = fleet.root / "data" / "registry" / POLICY / "rollouts.json"
    return json.loads(path.read_text()) if path.exists() else {"incumbent": 0, "records": []}


def record_of(fleet: Fleet, version: int) -> dict:
    return next((r for r in rollouts(fleet)["records"] if r["version"] == version), {})


def state_of(fleet: Fleet, version: int) -> str:
    return record_of(fleet, version).get("state", "")


def ran(fleet: Fleet, version: int) -> set[str]:
    """The robots whose edges reported running ``version`` (the gateway logs each PolicyApplied)."""
    return set(re.findall(rf"(robot-\d) now runs {POLICY} v{version} ", fleet.log("cloud")))


def times_ran(fleet: Fleet, robot: str, version: int) -> int:
    """How often ``robot`` reported starting to run ``version`` (again after a rollback, say)."""
    return len(re.findall(rf"{robot} now runs {POLICY} v{version} ", fleet.log("cloud")))
