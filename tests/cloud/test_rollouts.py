"""Canary rollouts in the gateway (cloud/gateway/rollouts.py) over a real registry on disk and real sessions: who is
offered which version, how the rule's decision reaches the robots, what the records keep across a restart."""

from __future__ import annotations

import asyncio

import pytest

from cloud.data.episodes import EpisodeRecord
from cloud.data.rollout_records import rollout_states
from cloud.data.version_registry import PolicyRegistry
from cloud.gateway.config import GatewayConfig
from cloud.gateway.rollouts import Rollouts, arm_counts
from cloud.gateway.sessions import Session
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from protocol.steps import schema_for

POLICY = "pick"


class Episodes:
    """The episodes a store would list: ``add`` finished ones of a version."""

    def __init__(self) -> None:
        self.records: list[EpisodeRecord] = []

    def add(self, version: int, succeeded: int, failed: int, intervened: int = 0) -> None:
        for kind in ["ok"] * succeeded + ["fail"] * failed + ["help"] * intervened:
            index = len(self.records)
            record = EpisodeRecord(POLICY, index, f"e{index}", "robot-1", "sim", "", num_steps=5, done=True)
            record.success, record.first_policy_version = kind != "fail", version
            record.intervention_steps = 2 if kind == "help" else 0
            self.records.append(record)

    def datasets(self) -> list[str]:
        return [POLICY]

    def episodes(self, dataset: str) -> list[EpisodeRecord]:
        return list(self.records)


def robot(rid: str) -> Session:
    caps = Capabilities((ArraySpec("state", "float32", (3,)),), ArraySpec("action", "float32", (2,)), 10.0, POLICY)
    schema = schema_for([("state", "float32", (3,))], ("float32", (2,)))
    return Session(ResourceInfo(rid, "robot", caps, source="sim"), POLICY, schema)


def setup(tmp_path, canary: float = 0.25) -> tuple[Rollouts, PolicyRegistry, dict[str, Session], Episodes]:
    registry = PolicyRegistry(tmp_path / "registry")
    sessions = {rid: robot(rid) for rid in ("robot-1", "robot-2", "robot-3", "robot-4")}
    episodes = Episodes()
    config = GatewayConfig(canary=canary, canary_episodes=3)
    return Rollouts(config, registry, episodes, sessions), registry, sessions, episodes


def offers(rollouts: Rollouts, sessions: dict[str, Session]) -> dict[str, int]:
    """Each robot's offered version after ``offer_all`` (0: none)."""
    rollouts.offer_all(POLICY)
    held = {rid: s.subscription(POLICY) for rid, s in sessions.items()}
    return {rid: h.offer.version if h.offer else 0 for rid, h in held.items()}


def canary_of_v2(tmp_path) -> tuple[Rollouts, PolicyRegistry, dict[str, Session], Episodes]:
    """v1 on every robot, v2 published: its canary runs."""
    rollouts, registry, sessions, episodes = setup(tmp_path)
    registry.publish(POLICY, b"v1")
    offers(rollouts, sessions)
    registry.publish(POLICY, b"v2")
    offers(rollouts, sessions)
    return rollouts, registry, sessions, episodes


def sent(session: Session, version: int) -> None:
    """As the pusher and the edge would: the offered version was sent and applied."""
    held = session.subscription(POLICY)
    held.sent_version = held.applied_version = version


def test_the_first_version_goes_to_every_robot_and_the_next_to_the_canary_share(tmp_path) -> None:
    rollouts, registry, sessions, _ = setup(tmp_path)
    registry.publish(POLICY, b"v1")
    assert set(offers(rollouts, sessions).values()) == {1}
    for session in sessions.values():
        sent(session, 1)
    registry.publish(POLICY, b"v2")
    offered = offers(rollouts, sessions)
    assert sorted(offered.values()) == [1, 1, 1, 2], offered  # 0.25 of 4 robots: one runs v2
    registry.publish(POLICY, b"v3")  # waits for v2's canary
    assert offers(rollouts, sessions) == offered
    record = rollouts.rollouts(POLICY).active
    assert record is not None and record.version == 2 and len(record.canary_robots) == 1
    assert rollouts.canary_members() == {record.canary_robots[0]: (POLICY, 2)}
    roles = {rid: rollouts.role(rid) for rid in sessions}
    assert sorted(roles.values()) == ["canary", "incumbent", "incumbent", "incumbent"]
    assert roles[record.canary_robots[0]] == "canary" and rollouts.role("nobody") == ""


def test_a_worse_canary_is_rolled_back_down_the_tunnel_and_never_offered_again(tmp_path) -> None:
    rollouts, registry, sessions, episodes = canary_of_v2(tmp_path)
    (canary,) = rollouts.rollouts(POLICY).active.canary_robots
    sent(sessions[canary], 2)
    episodes.add(1, succeeded=8, failed=1)
    episodes.add(2, succeeded=0, failed=4)
    asyncio.run(rollouts._judge(POLICY))

    record = rollouts.rollouts(POLICY).record(2)
    assert record.state == "rolled back" and record.decided_by == "rule"
    assert record.canary_counts == {"episodes": 4, "autonomous": 0, "intervened": 0}
    assert record.success_diff[1] < 0 and "0.00 over 4 episodes vs 0.89 over 9" in record.reason
    queued = sessions[canary].out.get_nowait()
    assert queued.WhichOneof("body") == "rollback"
    assert (queued.rollback.version, queued.rollback.to_version) == (2, 1)
    assert sessions[canary].subscription(POLICY).offer.version == 1  # its weights follow
    assert all(s.out.empty() for rid, s in sessions.items() if rid != canary)  # no other robot is told anything
    restarted = Rollouts(rollouts.config, registry, episodes, sessions)  # a restarted gateway reads the records
    assert restarted.rollouts(POLICY).incumbent == 1 and restarted.rollouts(POLICY).rolled_back(2)
    sessions[canary].subscription(POLICY).offer = None
    assert 2 not in offers(restarted, sessions).values()
    assert rollout_states(registry)[POLICY].record(2).state == "rolled back"
    off = Rollouts(GatewayConfig(), registry, episodes, sessions)  # restarted with canaries off: v2 stays off
    assert off.version_for(sessions[canary], registry.latest(POLICY)).version == 1
    registry.publish(POLICY, b"v3")
    assert off.version_for(sessions[canary], registry.latest(POLICY)).version == 3  # newer: as without canaries


def test_an_equal_canary_is_promoted_and_the_waiting_version_starts_the_next(tmp_path) -> None:
    rollouts, registry, sessions, episodes = setup(tmp_path, canary=2)
    registry.publish(POLICY, b"v1")
    offers(rollouts, sessions)
    registry.publish(POLICY, b"v2")
    assert sorted(offers(rollouts, sessions).values()) == [1, 1, 2, 2]  # a count: two robots
    registry.publish(POLICY, b"v3")
    episodes.add(1, succeeded=3, failed=1, intervened=1)
    episodes.add(2, succeeded=4, failed=1, intervened=0)
    asyncio.run(rollouts._judge(POLICY))
    assert rollouts.rollouts(POLICY).record(2).state == "promoted"
    assert rollouts.rollouts(POLICY).incumbent == 2
    assert rollouts.rollouts(POLICY).active.version == 3  # v3 waited; its canary starts now, against v2
    assert rollouts.rollouts(POLICY).active.incumbent == 2


def test_an_operator_decides_only_a_canary_in_progress(tmp_path) -> None:
    rollouts, registry, sessions, _ = setup(tmp_path)
    registry.publish(POLICY, b"v1")
    offers(rollouts, sessions)
    with pytest.raises(ValueError, match="version: pick v5 is not a canary in progress"):
        rollouts.decide(POLICY, 5, "promote", "operator", "test")
    with pytest.raises(ValueError, match="version: pick v1 has no earlier version"):
        rollouts.decide(POLICY, 1, "rollback", "operator", "test")
    registry.publish(POLICY, b"v2")
    offers(rollouts, sessions)
    with pytest.raises(ValueError, match="action: must be promote or rollback"):
        rollouts.decide(POLICY, 2, "delete", "operator", "test")
    words = rollouts.decide(POLICY, 2, "promote", "operator", "looks fine")
    assert "v2 promoted (by an operator (looks fine)" in words
    assert set(offers(rollouts, sessions).values()) == {2}


def test_an_operator_rolls_back_the_version_every_robot_runs_to_the_one_it_replaced(tmp_path) -> None:
    rollouts, _, sessions, _ = canary_of_v2(tmp_path)
    rollouts.decide(POLICY, 2, "promote", "operator", "looks fine")
    offers(rollouts, sessions)
    for session in sessions.values():
        sent(session, 2)
    words = rollouts.decide(POLICY, 2, "rollback", "operator", "drops cubes")
    assert "4 robot(s) go back to v1" in words and rollouts.rollouts(POLICY).incumbent == 1
    told = [s.out.get_nowait().rollback for s in sessions.values()]
    assert {(r.version, r.to_version) for r in told} == {(2, 1)}


def test_arm_counts_take_finished_kept_episodes_of_the_version() -> None:
    episodes = Episodes()
    episodes.add(3, succeeded=2, failed=1, intervened=1)
    episodes.records[0].done = False  # still running
    episodes.records[1].label = "discarded"
    episodes.add(4, succeeded=5, failed=0)
    assert arm_counts(episodes.records, 3) == arm_counts(episodes.records[2:4], 3)
    assert arm_counts(episodes.records, 3).episodes == 2 and arm_counts(episodes.records, 3).intervened == 1


def test_the_canary_count_leaves_at_least_one_robot_on_the_incumbent() -> None:
    assert [GatewayConfig(canary=0.25).canary_robots(n) for n in (1, 2, 4, 8, 9)] == [1, 1, 1, 2, 2]
    assert [GatewayConfig(canary=3).canary_robots(n) for n in (1, 2, 4, 8)] == [1, 1, 3, 3]
