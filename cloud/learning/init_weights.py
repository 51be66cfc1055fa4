"""The weights a dataset's learner rounds start from (``LearnerConfig.init``, the learner's ``--init DATASET=SOURCE``).

A source is a lerobot ``pretrained_model`` folder or a fleetloop weights file (``policies.pretrained_dir``), or the
registry: ``registry`` is the newest version of the dataset's policy that ``fleetloop policy publish`` put there (the
learner's own versions are passed over, so a restarted learner starts from the same weights), ``registry:vN`` that
version. The dataset's first HG-DAgger round (and any round that starts afresh) starts from a fresh copy of those
weights and keeps their normalization (the processors' statistics, the MLP's buffers) instead of a random policy
fitted to the data; later rounds continue what it trained (``cloud.learning.algorithms.hg_dagger``), with
``LearnerConfig.adapters`` only LoRA adapters around the frozen weights.

The source is checked when the learner starts (``check_init``: the folder as hostile input, and against the dataset's
spec when the store holds it already); a dataset whose robots first appear later is checked at its first round,
where a mismatch is logged once and the learner trains no version of it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from cloud.data.layout import DataLayout
from cloud.data.policy_import import newest_imported, schema_spec
from cloud.data.store_union import StoreUnion
from cloud.data.version_registry import PolicyRegistry
from policies.base import Policy
from policies.factory import cpu_copy
from policies.pretrained_dir import load_policy
from policies.spec import PolicySpec, check_policy_fits
from policies.weights import policy_from_bytes, policy_to_bytes

log = logging.getLogger("fleetloop.learner")

REGISTRY = "registry"
_REGISTRY_VERSION = re.compile(r"registry:v?(\d+)")


@dataclass(frozen=True)
class InitSource:
    """Where a dataset's rounds start: a folder or file (``path``), or a version of the registry's policy
    (``version`` None: the newest one published from outside the learner)."""

    dataset: str
    text: str  # as given, for messages
    path: Path | None = None
    version: int | None = None

    @classmethod
    def parse(cls, dataset: str, text: str) -> InitSource:
        """``registry``, ``registry:vN`` or a path; ValueError naming what is wrong."""
        if text == REGISTRY:
            return cls(dataset, text)
        match = _REGISTRY_VERSION.fullmatch(text)
        if match:
            return cls(dataset, text, version=int(match.group(1)))
        if text.startswith(f"{REGISTRY}:"):
            raise ValueError(f"{text!r}: registry sources are 'registry' or 'registry:vN'")
        path = Path(text)
        if not path.exists():
            raise ValueError(
                f"{text}: no such folder or file (a pretrained_model folder, a weights file or 'registry')"
            )
        return cls(dataset, text, path=path.resolve())

    def pinned(self, registry: PolicyRegistry) -> InitSource:
        """A registry source with its version resolved now; ValueError when the registry has no such version."""
        if self.path is not None:
            return self
        if self.version is None:
            version = newest_imported(registry, self.dataset)
            if version is None:
                why = f"no version of {self.dataset} was published with `fleetloop policy publish`"
                raise ValueError(f"{why}; name one with registry:vN")
            return InitSource(self.dataset, self.text, version=version)
        if self.version not in registry.versions(self.dataset):
            raise ValueError(f"the registry holds no v{self.version} of {self.dataset}")
        return self

    @property
    def label(self) -> str:
        return f"{self.dataset} v{self.version}" if self.path is None else str(self.path)

    def load(self, registry: PolicyRegistry, spec: PolicySpec | None) -> Policy:
        """The policy, checked against ``spec`` (None: on its own); ValueError naming the file or feature."""
        if self.path is not None:
            return load_policy(self.path, spec)
        pinned = self.pinned(registry)
        policy = policy_from_bytes(registry.read_verified(self.dataset, pinned.version or 0))
        if spec is not None:
            config = policy.config_dict()
            config = config.get("base_config", config)
            check_policy_fits(config.get("observation"), config.get("action_dim"), spec)
        return policy


@dataclass(frozen=True)
class Init:
    """A fresh copy of a dataset's starting weights, and where they came from (for the version's note)."""

    policy: Policy
    label: str


class InitWeights:
    """Each dataset's starting weights, loaded once (at its first round) and copied for every round."""

    def __init__(self, sources: tuple[tuple[str, str], ...], registry: PolicyRegistry) -> None:
        self.registry = registry
        self.sources = {dataset: InitSource.parse(dataset, text).pinned(registry) for dataset, text in sources}
        self._weights: dict[str, bytes] = {}
        self._refused: dict[str, str] = {}

    def for_round(self, dataset: str, schema: dict) -> Init | None:
        """A fresh copy of ``dataset``'s starting weights, or None without a source; ValueError when the source does
        not fit the dataset (logged once; every later round of it is refused the same way)."""
        source = self.sources.get(dataset)
        if source is None:
            return None
        if dataset in self._refused:
            raise ValueError(self._refused[dataset])
        if dataset not in self._weights:
            try:
                policy = source.load(self.registry, schema_spec(schema, dataset))
            except ValueError as err:
                self._refused[dataset] = f"--init {dataset}={source.text}: {err}"
                log.error("%s; the learner trains no version of %s", self._refused[dataset], dataset)
                raise ValueError(self._refused[dataset]) from None
            self._weights[dataset] = policy_to_bytes(policy)
            log.info("%s starts its rounds from %s", dataset, source.label)
        return Init(cpu_copy(policy_from_bytes(self._weights[dataset])), source.label)


def check_init(sources: tuple[tuple[str, str], ...], layout: DataLayout) -> None:
    """Every ``--init`` source loads (as hostile input) and fits its dataset where the store holds it already;
    ValueError naming the flag, the source and the file or feature."""
    registry = PolicyRegistry(layout.registry_at, public_key=layout.learner_public_key)
    store = StoreUnion(layout.store_at) if layout.has_store() else None
    try:
        for dataset, text in sources:
            try:
                source = InitSource.parse(dataset, text).pinned(registry)
                held = store is not None and dataset in store.datasets()
                source.load(registry, schema_spec(store.schema(dataset), dataset) if held else None)
            except ValueError as err:
                raise ValueError(f"--init {dataset}={text}: {err}") from None
    finally:
        if store is not None:
            store.close()
