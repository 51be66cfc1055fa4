"""Training batches from the episode store with explicit ratios between kinds of data, per dataset (task).

Every step falls into exactly one kind:

- ``online``: the policy chose the action (``intervention`` false): on-policy data, subject to the staleness budget.
- ``intervention``: a person took over while a policy ran (``intervention`` true, ``policy_version`` > 0).
- ``demo``: a person drove while no policy ran yet (``intervention`` true, ``policy_version`` 0).
- ``offline``: any step of an episode whose ``source`` is one of ``offline_sources`` (imported data sets).

No step of an episode a person discarded (re-recorded: ``EpisodeRecord.discarded``) is ever drawn, of any kind.

A *group* is a set of kinds written with ``+`` (``"intervention+demo"``); ``ratios`` give each group its share of every
batch, e.g. ``{"online": 0.5, "intervention+demo": 0.5}`` is HIL-SERL's 50/50 between the online buffer and the
demonstration buffer. A batch holds exactly ``round(share * batch_size)`` steps of each group (largest remainder, so the
counts add up to the batch size). Within a group a step is drawn in proportion to its staleness weight
(``cloud.learning.staleness``); a step of weight 0 is never drawn. A group with no drawable step gives its share to the
others in proportion to theirs (SAC's first round has demonstrations only), so ``ratios`` are the shares once every
group has data. Where a dataset stores ``meta.foresight_error`` (phone demonstrations, ``cloud.serving.foresight``), a
step's weight is also multiplied by its foresight weight: steps where the policy's predicted trajectory was wrong by
more than ``foresight_tolerance_m`` are drawn up to ``foresight_max_weight`` times as often. ``ratios=None`` draws
uniformly (times those weights) over the kinds the algorithm trains on, which is what HG-DAgger always did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field, model_validator

from cloud.data.store import ColumnSpec, EpisodeStore
from cloud.learning.staleness import StalenessBudget
from cloud.serving.foresight import ERROR_COLUMN, foresight_weights
from hal.config import CodeConfig, ConfigError, Items, Name, invalid

KINDS = ("online", "intervention", "demo", "offline")
ONLINE, INTERVENTION, DEMO, OFFLINE = range(len(KINDS))
LABELLED_KINDS = ("intervention", "demo", "offline")  # a person chose these actions (or an imported data set did)
Ratios = tuple[tuple[str, float], ...]


def _kinds_and_problem(group: str) -> tuple[tuple[str, ...], str]:
    """The kinds of ``group`` (``"intervention+demo"``) and what is wrong with it ("" when nothing)."""
    kinds = tuple(k.strip() for k in group.split("+"))
    for kind in kinds:
        if kind not in KINDS:
            return kinds, f"unknown kind {kind!r} in group {group!r}; kinds are {KINDS}"
    if len(set(kinds)) != len(kinds):
        return kinds, f"group {group!r} names a kind twice"
    return kinds, ""


def group_kinds(group: str, field_name: str = "sampler.ratios") -> tuple[str, ...]:
    kinds, problem = _kinds_and_problem(group)
    if problem:
        raise ValueError(f"{field_name}: {problem}")
    return kinds


def _checked_ratios(ratios: object, *where: str) -> Ratios:
    """A mapping or pairs of group -> ratio as checked ratios; errors name the field ``where`` (and its group)."""
    if isinstance(ratios, Mapping):
        ratios = ratios.items()
    if not isinstance(ratios, Iterable) or isinstance(ratios, str):
        raise invalid(f"should be a mapping of group to ratio, got {ratios!r}", *where)
    items = tuple((str(k), v) for k, v in ratios)
    if not items:
        raise invalid("needs at least one group", *where)
    seen: set[str] = set()
    out = []
    for group, ratio in items:
        kinds, problem = _kinds_and_problem(group)
        if problem:
            raise invalid(problem, *where)
        if seen & set(kinds):
            raise invalid(f"kind(s) {sorted(seen & set(kinds))} appear in more than one group", *where)
        seen |= set(kinds)
        try:
            value = float(ratio)
        except (TypeError, ValueError):
            raise invalid(f"ratio must be a number, got {ratio!r}", *where, group) from None
        if not (value >= 0 and np.isfinite(value)):
            raise invalid(f"ratio must be a finite number >= 0, got {ratio!r}", *where, group)
        out.append(("+".join(kinds), value))
    if sum(v for _, v in out) <= 0:
        raise invalid("ratios must not all be 0", *where)
    return tuple(out)


def _checked_per_dataset(per_dataset: object) -> tuple[tuple[str, Ratios], ...]:
    items = per_dataset.items() if isinstance(per_dataset, Mapping) else per_dataset
    checked = []
    for dataset, ratios in items:  # type: ignore[attr-defined]
        if not isinstance(dataset, str) or not dataset:
            raise invalid(f"dataset names must be non-empty strings, got {dataset!r}", "per_dataset")
        checked.append((dataset, _checked_ratios(ratios, "per_dataset", dataset)))
    if len({d for d, _ in checked}) != len(checked):
        raise invalid("a dataset appears twice", "per_dataset")
    return tuple(sorted(checked))


def parse_ratios(text: str) -> Ratios:
    """``"online=0.5,intervention+demo=0.5"`` -> ratios (checked); a ConfigError naming the bad part."""
    items = []
    for part in text.split(","):
        group, sep, value = part.partition("=")
        if not sep:
            raise ConfigError("sampler.ratios", f"{part!r} is not GROUP=RATIO")
        try:
            items.append((group.strip(), float(value)))
        except ValueError:
            raise ConfigError(f"sampler.ratios.{group.strip()}", f"ratio must be a number, got {value!r}") from None
    return SamplerConfig(ratios=items).ratios or ()


class SamplerConfig(CodeConfig):
    """``ratios``: the default for every dataset (None: uniform over what the algorithm trains on);
    ``per_dataset``: ratios of single datasets (tasks), overriding the default; ``offline_sources``: episode
    sources whose steps are imported ``offline`` data. Mappings are accepted and stored as sorted tuples.
    ``foresight_tolerance_m``, ``foresight_max_weight``: see ``cloud.serving.foresight.foresight_weights`` (a max
    weight of 1 samples phone demonstrations without regard to their foresight error)."""

    config_name = "sampler"

    ratios: Items[tuple[str, float]] | None = None
    per_dataset: Items[tuple[Name, Items[tuple[str, float]]]] = ()
    offline_sources: Items[str] = ()
    foresight_tolerance_m: Annotated[float, Field(gt=0)] = 0.02  # metres
    foresight_max_weight: Annotated[float, Field(ge=1)] = 5.0

    @model_validator(mode="before")
    @classmethod
    def _ratios_as_pairs(cls, data: Any) -> Any:
        """Ratios come as mappings or pairs of group -> ratio; checked here so errors name the group."""
        if isinstance(data, dict):
            data = dict(data)
            if data.get("ratios") is not None:
                data["ratios"] = _checked_ratios(data["ratios"], "ratios")
            if "per_dataset" in data:
                data["per_dataset"] = _checked_per_dataset(data["per_dataset"])
        return data

    def foresight_weights(self, table: StepTable) -> np.ndarray | None:
        """Each row's foresight weight, or None where the dataset stores no foresight error."""
        if table.foresight_error is None or self.foresight_max_weight == 1:
            return None
        return foresight_weights(table.foresight_error, self.foresight_tolerance_m, self.foresight_max_weight)

    def ratios_for(self, dataset: str) -> Ratios | None:
        return dict(self.per_dataset).get(dataset, self.ratios)


@dataclass
class StepTable:
    """Committed rows ``[0, rows)`` of one dataset with what sampling needs per row.

    ``next_row``: the row of the same episode's next step (the next observation), or -1 where there is none yet
    (the episode's last committed step). ``terminal``: the step ended its episode with success, so there is no next
    observation to bootstrap from. A done step without success (time limit) has neither.
    """

    dataset: str
    columns: dict[str, np.ndarray]
    kind: np.ndarray  # int8 index into KINDS
    next_row: np.ndarray
    terminal: np.ndarray
    foresight_error: np.ndarray | None = None  # metres per row (NaN: not scored), where the dataset stores it
    discarded: np.ndarray | None = None  # rows of episodes a person discarded (re-recorded): never drawn
    # columns asked for but not held (cameras: cloud.learning.step_index): training fetches the rows it draws
    streamed: dict[str, ColumnSpec] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.kind)

    def has_transition(self) -> np.ndarray:
        """Rows usable as (s, a, r, s', terminal) transitions."""
        return (self.next_row >= 0) | self.terminal

    def chunks(self, column: str, size: int) -> np.ndarray:
        """``column`` as chunks of ``size`` consecutive steps of each row's episode, (rows, size, ...): the
        targets of a chunked policy. Past an episode's last (committed) step the last value repeats."""
        return self.sequences(column, range(size))[0]

    def sequences(self, column: str, offsets) -> tuple[np.ndarray, np.ndarray]:
        """``column`` at each row's episode steps ``offsets`` away (negative: earlier), (rows, T, ...), and
        where that step does not exist (T-wide bool, lerobot's ``action_is_pad``): there the nearest one repeats."""
        rows, pad = sequence_rows(self.next_row, offsets)
        return self.columns[column][rows], pad


def sequence_rows(next_row: np.ndarray, offsets) -> tuple[np.ndarray, np.ndarray]:
    """(N, T) row indices of each row's episode steps at ``offsets`` (0: the row itself, 1: its successor, -1:
    its predecessor...) and (N, T) pad: True where the episode (or what is committed of it) has no such step,
    whose index is then the nearest step that exists. ``next_row[i]`` is -1 where row i has no successor."""
    next_row = np.asarray(next_row, dtype=np.int64)
    offsets = [int(k) for k in offsets]
    n = len(next_row)
    prev_row = np.full(n, -1, np.int64)
    has_next = next_row >= 0
    prev_row[next_row[has_next]] = np.flatnonzero(has_next)
    rows = np.empty((n, len(offsets)), np.int64)
    pad = np.zeros((n, len(offsets)), bool)
    for column, offset in enumerate(offsets):
        current, missing = np.arange(n), np.zeros(n, bool)
        link = next_row if offset > 0 else prev_row
        for _ in range(abs(offset)):
            step = link[current]
            missing |= step < 0
            current = np.where(step >= 0, step, current)
        rows[:, column], pad[:, column] = current, missing
    return rows, pad


NEEDED = ["episode_index", "seq", "intervention", "policy_version", "done", "success"]  # what sampling reads per row


def step_kinds(intervention: np.ndarray, policy_version: np.ndarray) -> np.ndarray:
    """Each row's kind (index into KINDS) from its provenance, before offline episodes are marked."""
    labelled = intervention.astype(bool)
    return np.where(labelled, np.where(policy_version > 0, INTERVENTION, DEMO), ONLINE).astype(np.int8)


def link_successors(next_row: np.ndarray, rows: np.ndarray, episode_index: np.ndarray, seq: np.ndarray) -> None:
    """Sets ``next_row`` of each of ``rows`` whose episode's next seq is among ``rows`` (``episode_index`` and
    ``seq`` of those rows). Rows of one episode interleave with other episodes'; ordering by (episode, seq) finds
    each successor."""
    if len(rows) < 2:
        return
    order = np.lexsort((seq, episode_index))
    ep, sq = episode_index[order], seq[order]
    follows = (ep[1:] == ep[:-1]) & (sq[1:] == sq[:-1] + 1)
    next_row[rows[order[:-1][follows]]] = rows[order[1:][follows]]


def marked_episodes(store: EpisodeStore, dataset: str, offline_sources: tuple[str, ...]) -> tuple[list, list]:
    """(episodes from ``offline_sources``, episodes a person discarded) by index: what can change after rows are
    read (a label arrives later) comes from the store's episode records, never from re-reading rows."""
    records = store.episodes(dataset)
    offline = [e.index for e in records if e.source in offline_sources] if offline_sources else []
    return offline, [e.index for e in records if e.discarded]


def load_steps(
    store: EpisodeStore,
    dataset: str,
    columns: list[str],
    rows: int | None = None,
    offline_sources: tuple[str, ...] = (),
) -> StepTable:
    """Reads ``columns`` (plus the provenance sampling needs) of rows ``[0, rows)`` (all committed by default).

    Reads every row at every call; the learner keeps a ``cloud.learning.step_index.StepIndex`` instead, which reads
    only what is new."""
    scored = ERROR_COLUMN in store.schema(dataset)
    names = list(dict.fromkeys([*columns, *NEEDED, *([ERROR_COLUMN] if scored else [])]))
    data = store.read(dataset, columns=names, stop=rows)
    n = len(data["seq"])
    kind = step_kinds(data["intervention"], data["policy_version"])
    offline, discarded = marked_episodes(store, dataset, offline_sources)
    if offline:
        kind[np.isin(data["episode_index"], offline)] = OFFLINE
    next_row = np.full(n, -1, np.int64)
    link_successors(next_row, np.arange(n), data["episode_index"], data["seq"])
    terminal = data["done"].astype(bool) & data["success"].astype(bool)
    next_row[data["done"].astype(bool)] = -1
    foresight_error = data.pop(ERROR_COLUMN) if scored and ERROR_COLUMN not in columns else data.get(ERROR_COLUMN)
    return StepTable(
        dataset, data, kind, next_row, terminal, foresight_error, np.isin(data["episode_index"], discarded)
    )


@dataclass
class _Group:
    name: str
    ratio: float
    positions: np.ndarray  # positions in Sampler.rows
    weights: torch.Tensor | None  # None: uniform


@dataclass
class Sampler:
    """Draws batches of row positions with exact per-group counts (see the module docstring).

    ``rows``: the table rows that can ever be drawn (weight > 0 in some group); ``draw`` returns positions into
    ``rows``, so a trainer can keep just ``rows``' data.
    """

    rows: np.ndarray
    groups: list[_Group] = field(default_factory=list)
    boosted: int = 0  # drawable rows whose priority is above 1 (e.g. the foresight was wrong there)

    @classmethod
    def build(
        cls,
        table: StepTable,
        ratios: Ratios | None,
        trainable_kinds: tuple[str, ...],
        staleness: StalenessBudget,
        current_version: int,
        eligible: np.ndarray | None = None,
        priority: np.ndarray | None = None,
    ) -> Sampler:
        """``trainable_kinds``: what the algorithm can learn from (HG-DAgger: labelled kinds only); a ratio group
        naming another kind is a ValueError. ``eligible``: rows the algorithm can use at all (SAC: transitions).
        ``priority``: a weight >= 1 per row that multiplies the staleness weight (the foresight weights)."""
        weights = staleness.weights(
            current_version,
            table.columns["policy_version"],
            table.columns["intervention"],
            exempt=table.kind == OFFLINE,
        )
        if eligible is not None:
            weights = np.where(eligible, weights, 0.0)
        if table.discarded is not None:
            weights = np.where(table.discarded, 0.0, weights)
        boosted = 0
        if priority is not None:
            weights = weights * priority
            boosted = int(np.count_nonzero((priority > 1) & (weights > 0)))
        spec = ratios if ratios is not None else (("+".join(trainable_kinds), 1.0),)
        members = []
        for group, ratio in spec:
            kinds = group_kinds(group)
            for kind in kinds:
                if kind not in trainable_kinds:
                    raise ValueError(
                        f"sampler.ratios.{group}: this algorithm cannot train on {kind!r} steps "
                        f"(it trains on {trainable_kinds})"
                    )
            in_group = np.isin(table.kind, [KINDS.index(k) for k in kinds]) & (weights > 0)
            members.append((group, ratio, np.flatnonzero(in_group)))
        rows = np.unique(np.concatenate([m for _, _, m in members])) if members else np.zeros(0, np.int64)
        groups = []
        for group, ratio, member_rows in members:
            w = weights[member_rows]
            groups.append(
                _Group(
                    group,
                    ratio,
                    np.searchsorted(rows, member_rows),
                    None if np.all(w == 1.0) else torch.as_tensor(w, dtype=torch.float64),
                )
            )
        return cls(rows, groups, boosted)

    @property
    def size(self) -> int:
        return len(self.rows)

    def group_sizes(self) -> dict[str, int]:
        return {g.name: len(g.positions) for g in self.groups}

    def shares(self) -> dict[str, float]:
        """The fraction of every batch each group gets now (empty groups' shares go to the others)."""
        total = sum(g.ratio for g in self.groups if len(g.positions))
        return {g.name: (g.ratio / total if len(g.positions) and total > 0 else 0.0) for g in self.groups}

    def counts(self, batch_size: int) -> dict[str, int]:
        """Steps of each group in a batch of ``batch_size``: exact shares rounded by largest remainder."""
        shares = self.shares()
        if not any(shares.values()):
            raise ValueError("the sampler has no step to draw (every group is empty or weighs 0)")
        exact = {name: share * batch_size for name, share in shares.items()}
        counts = {name: int(np.floor(x)) for name, x in exact.items()}
        remainder = batch_size - sum(counts.values())
        order = sorted(exact, key=lambda name: (-(exact[name] - counts[name]), list(exact).index(name)))
        for name in order[:remainder]:
            counts[name] += 1
        return counts

    def probabilities(self) -> np.ndarray:
        """Each drawable row's probability per draw (over ``rows``); sums to 1."""
        p = np.zeros(self.size, np.float64)
        for g, share in zip(self.groups, self.shares().values(), strict=True):
            if share == 0:
                continue
            w = np.ones(len(g.positions)) if g.weights is None else g.weights.numpy()
            np.add.at(p, g.positions, share * w / w.sum())
        return p

    def age_stats(self, policy_version: np.ndarray, current_version: int) -> dict[str, float]:
        """How old a batch's policy-made steps are, in versions (``cloud.learning.staleness``): ``mean_age`` (per
        draw), ``max_age`` (of any drawable one), ``stale_share`` (the share of every batch from older versions).
        Demonstrations and imported steps (version 0) have no policy to lag behind and count in none of them."""
        made = np.asarray(policy_version)[self.rows] > 0
        if not self.size or not made.any():
            return {"mean_age": 0.0, "max_age": 0.0, "stale_share": 0.0}
        p = self.probabilities()[made]
        ages = np.maximum(current_version - np.asarray(policy_version)[self.rows][made], 0).astype(np.float64)
        drawn = p > 0
        return {
            "mean_age": float((p * ages).sum() / p.sum()) if p.sum() > 0 else 0.0,
            "max_age": float(ages[drawn].max()) if drawn.any() else 0.0,
            "stale_share": float(p[ages >= 1].sum()),
        }

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Positions into ``rows`` for one batch, grouped (shuffle if order matters)."""
        parts = []
        for g, count in zip(self.groups, self.counts(batch_size).values(), strict=True):
            if count == 0:
                continue
            if g.weights is None:
                pick = torch.randint(len(g.positions), (count,), generator=generator)
            else:
                pick = torch.multinomial(g.weights, count, replacement=True, generator=generator)
            parts.append(torch.as_tensor(g.positions)[pick])
        return torch.cat(parts)
