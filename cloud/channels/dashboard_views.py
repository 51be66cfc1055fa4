"""What the dashboard shows, as JSON-ready dicts: the live fleet, per-version learning curves with their uncertainty,
and the episode browser. Pure reads of the gateway's fleet and the store's in-memory episode records; only opening
one episode reads rows (a few columns, and a handful of camera frames)."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from cloud.data.episodes import EpisodeRecord
from cloud.data.rollout_records import CANARY, PolicyRollouts
from cloud.data.store_union import StoreUnion
from cloud.gateway.canary_rule import wilson
from cloud.gateway.fleet import FleetMember
from cloud.gateway.rollouts import arm_counts, counted
from cloud.gateway.sessions import Session

Z95 = 1.959964  # two-sided 95%
MAX_EPISODES_LISTED = 200
FRAMES_SHOWN = 12
SAMPLES_SHOWN = 400  # action rows drawn per episode (evenly picked beyond this)
MAX_LOSS_POINTS = 300
LOSS_PREFIX = "train/"  # the learner's per-round losses (cloud.learning.curves)


def mean_interval(values: list[float], z: float = Z95) -> tuple[float, float, float]:
    """Mean of per-episode rates and a normal-approximation interval over episodes, clipped to [0, 1]."""
    if not values:
        return 0.0, 0.0, 1.0
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, 0.0, 1.0
    half = z * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean, max(0.0, mean - half), min(1.0, mean + half)


@dataclass(frozen=True)
class FleetRate:
    """A member's step count at a moment: the next snapshot's steps/s comes from the difference."""

    steps: int
    at: float


def fleet_rows(
    members: Iterable[FleetMember],
    sessions: Mapping[str, Session],
    now: float,
    rates: dict[str, FleetRate],
    visible: Callable[[str], bool],
    canary: Callable[[str], str] = lambda _robot: "",
) -> list[dict]:
    """One row per resource the operator may see. ``rates`` (updated here) holds the previous counts."""
    rows = []
    for member in sorted(members, key=lambda m: m.resource.id):
        robot = member.resource.id
        if not visible(robot):
            continue
        before = rates.get(robot)
        rates[robot] = FleetRate(member.steps, now)
        elapsed = now - before.at if before else 0.0
        steps_per_s = (member.steps - before.steps) / elapsed if before and elapsed > 0 else 0.0
        session = sessions.get(robot)
        rows.append(
            {
                "id": robot,
                "kind": member.resource.kind,
                "state": str(member.state),
                "task": member.task,
                "policy": session.policy_name if session is not None else "",
                "version": member.policy_version,
                "steps": member.steps,
                "steps_per_s": round(max(0.0, steps_per_s), 1),
                "intervention_rate": round(member.interventions / member.steps, 3) if member.steps else 0.0,
                "backlog_steps": member.backlog.steps,
                "backlog_bytes": member.backlog.bytes,
                "backlog_oldest_s": round(member.backlog.oldest_s, 1),
                "seen_s_ago": round(max(0.0, now - member.last_seen), 1),
                "connected": session is not None,
                "canary": canary(robot),
                "takeover": f"/takeover/{robot}",
            }
        )
    return rows


def version_curve(episodes: Iterable[EpisodeRecord]) -> list[dict]:
    """Per policy version (the version an episode started under): finished autonomous episodes, autonomous success
    (succeeded with no intervention) with its Wilson 95% interval, and the intervention rate (mean of each
    episode's share of steps a person drove) with a 95% interval over episodes."""
    by_version: dict[int, list[EpisodeRecord]] = {}
    for episode in episodes:
        if counted(episode) and episode.first_policy_version >= 0:
            by_version.setdefault(episode.first_policy_version, []).append(episode)
    points = []
    for version in sorted(by_version):
        done = by_version[version]
        wins = arm_counts(done, version).autonomous
        low, high = astuple(wilson(wins, len(done), Z95))
        shares = [e.intervention_steps / e.num_steps for e in done if e.num_steps]
        rate, rate_low, rate_high = mean_interval(shares)
        points.append(
            {
                "version": version,
                "episodes": len(done),
                "successes": wins,
                "success": round(wins / len(done), 4),
                "success_low": round(low, 4),
                "success_high": round(high, 4),
                "intervention_rate": round(rate, 4),
                "intervention_low": round(rate_low, 4),
                "intervention_high": round(rate_high, 4),
                "robots": len({e.resource_id for e in done}),
            }
        )
    return points


def curves(store: StoreUnion, datasets: Iterable[str]) -> dict[str, list[dict]]:
    """``version_curve`` of each dataset (its policy is named after it), from the store's episode records."""
    return {name: version_curve(store.episodes(name)) for name in datasets}


def losses(runs: Path, policy: str, most: int = MAX_LOSS_POINTS) -> dict[str, list[list[float]]]:
    """The learner's training losses of ``policy`` from its TensorBoard event files (``<root>/runs/<policy>``,
    ``cloud.learning.tracking``): tag -> [[gradient step, value], ...], at most ``most`` points per tag, evenly
    picked. Empty when the learner logs elsewhere (``--track``) or nothing yet."""
    folder = runs / policy
    if not folder.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    out = {}
    for tag in events.Tags().get("scalars", []):
        if tag.startswith(LOSS_PREFIX):
            points = events.Scalars(tag)
            out[tag.removeprefix(LOSS_PREFIX)] = [[p.step, round(p.value, 6)] for p in _pick(points, most)]
    return out


def _pick(points: list, most: int) -> list:
    return [points[i] for i in _evenly(len(points), most)] if len(points) > most else points


def episode_list(store: StoreUnion, dataset: str, limit: int = MAX_EPISODES_LISTED) -> list[dict]:
    """The newest ``limit`` episodes of a dataset, newest first."""
    return [_item(e) for e in reversed(store.episodes(dataset)[-limit:])]


def _item(e: EpisodeRecord) -> dict:
    return {
        "id": e.episode_id,
        "robot": e.resource_id,
        "version": e.first_policy_version,
        "steps": e.num_steps,
        "interventions": e.intervention_steps,
        "outcome": _outcome(e),
        "source": e.source,
        "task": e.task,
    }


def _outcome(episode: EpisodeRecord) -> str:
    if episode.label:
        return episode.label
    if not episode.done:
        return "running"
    return "success" if episode.success else "failure"


def episode_detail(store: StoreUnion, dataset: str, episode_id: str) -> dict:
    """One episode: its record, its actions and interventions per step (at most ``SAMPLES_SHOWN``), and up to
    ``FRAMES_SHOWN`` camera frames of each camera as JPEG data URLs. KeyError naming what is not there."""
    record = next((e for e in store.episodes(dataset) if e.episode_id == episode_id), None)
    if record is None:
        raise KeyError(f"episode: no episode {episode_id!r} in {dataset}")
    rows = store.row_indices(dataset, episode_id)
    if not len(rows):
        raise KeyError(f"episode: {episode_id!r} has no committed rows yet")
    schema = store.schema(dataset)
    first, stop = int(rows[0]), int(rows[-1]) + 1  # other episodes' rows between are read too: small columns
    small = store.read(dataset, ["action", "intervention", "seq"], first, stop)
    picked = _evenly(len(rows), SAMPLES_SHOWN)
    actions = small["action"][rows[picked] - first].reshape(len(picked), -1)
    cameras = [name for name, spec in schema.items() if name.startswith("obs.") and len(spec.shape) == 3]
    frames = {}
    for camera in cameras:
        shown = rows[_evenly(len(rows), FRAMES_SHOWN)]
        frames[camera] = [_jpeg(store.read(dataset, [camera], int(r), int(r) + 1)[camera][0]) for r in shown]
    return {
        **_item(record),
        "seq": small["seq"][rows[picked] - first].tolist(),
        "actions": np.round(actions.astype(np.float64), 4).tolist(),
        "intervention": small["intervention"][rows[picked] - first].astype(bool).tolist(),
        "frames": frames,
    }


def _evenly(count: int, most: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(count, most)).round().astype(int)) if count else np.zeros(0, int)


def _jpeg(frame: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def rollout_rows(states: Mapping[str, PolicyRollouts], visible: Callable[[str], bool]) -> dict[str, dict]:
    """Per policy the operator may see: its incumbent and its rollouts, newest first, each with its decision's words
    and numbers (as the gateway recorded them), and whether it may still be promoted or rolled back."""
    out = {}
    for name, rollouts in sorted(states.items()):
        if not visible(name) or not rollouts.records:
            continue
        records = [
            {
                "version": r.version,
                "incumbent": r.incumbent,
                "state": r.state,
                "canary_robots": list(r.canary_robots),
                "decided_by": r.decided_by,
                "reason": r.reason,
                "canary_counts": dict(r.canary_counts),
                "incumbent_counts": dict(r.incumbent_counts),
                "success_diff": list(r.success_diff),
                "intervention_diff": list(r.intervention_diff),
                "open": r.state == CANARY,
            }
            for r in reversed(rollouts.records)
        ]
        out[name] = {"incumbent": rollouts.incumbent, "records": records}
    return out
