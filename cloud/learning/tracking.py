"""Where the learner's curves go: TensorBoard (the default), Weights & Biases or trackio, one run per policy.

A ``Tracker`` takes scalars by tag (``train/loss``) at a step. Tags are grouped by their first part (``train``,
``per_version``...): each group has its own x axis, so ``per_version/*`` can be logged at step = the policy version
while ``train/*`` runs on gradient steps. TensorBoard keeps a step per scalar anyway; W&B gets a ``<group>/step``
metric per group as its x axis (``define_metric``), as W&B itself recommends for several axes in one run.

Every run lives under the cloud's data folder: ``<root>/runs/<policy>/`` (TensorBoard's event files, W&B's
``wandb/`` folder); trackio keeps its database in ``<root>/runs/trackio/`` unless ``TRACKIO_DIR`` says otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import netrc
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("fleetloop.learner")

BACKENDS = ("tensorboard", "wandb", "trackio", "none")
# The package each backend needs and how to get it (pinned in pyproject.toml: tensorboard always, the others in
# the ``tracking`` extra).
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install 'tensorboard==2.21.0'"),
    "wandb": ("wandb", "pip install 'wandb==0.31.0'  (or: pip install -e '.[tracking]')"),
    "trackio": ("trackio", "pip install 'trackio==0.43.0'  (or: pip install -e '.[tracking]')"),
}


class Tracker(Protocol):
    """One policy's run in an experiment tracker."""

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Records ``values`` (tag -> number) at ``step`` of their tags' group."""
        ...

    def close(self) -> None:
        """Writes out everything logged and ends the run."""
        ...


def check_backend(backend: str, flag: str = "--track") -> None:
    """ValueError naming ``flag`` when ``backend`` is unknown or its package is not installed (with how to get it)."""
    if backend not in BACKENDS:
        raise ValueError(f"{flag}: unknown tracker {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "none":
        return
    module, install = PACKAGES[backend]
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{flag} {backend}: the {module} package is not installed here; install it with: {install}")


def open_tracker(backend: str, runs_dir: Path, policy: str, config: Mapping[str, Any]) -> Tracker | None:
    """The run of ``policy`` under ``runs_dir`` in ``backend`` (None for ``none``); ``config``: the learner's settings,
    shown beside the run where the backend keeps them."""
    check_backend(backend)
    if backend == "tensorboard":
        return TensorBoardTracker(runs_dir / policy)
    if backend == "wandb":
        return WandbTracker(runs_dir / policy, policy, config)
    if backend == "trackio":
        return TrackioTracker(runs_dir / "trackio", policy, config)
    return None


def group_of(tag: str) -> str:
    return tag.split("/", 1)[0] if "/" in tag else ""


class TensorBoardTracker:
    """Event files in ``logdir`` written with tensorboard's own writer (no torch or TensorFlow needed to read them:
    ``tensorboard --logdir <root>/runs``). Flushed after every call: a learner round is seconds apart."""

    def __init__(self, logdir: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        self._writer = EventFileWriter(str(logdir), max_queue_size=100, flush_secs=30)

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _wandb_mode() -> str:
    """``WANDB_MODE`` when set; else online with a W&B login on this machine, offline without one (no prompt in a
    learner process, no network needed: ``wandb sync`` uploads an offline run later)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


class WandbTracker:
    """A W&B run per policy in project ``fleetloop`` (``WANDB_PROJECT`` overrides), its files under ``run_dir``."""

    _open = 0  # runs of this process not closed yet

    def __init__(self, run_dir: Path, policy: str, config: Mapping[str, Any]) -> None:
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        mode = _wandb_mode()
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "fleetloop"),
            name=policy,
            group=policy,
            dir=str(run_dir),
            config=dict(config),
            mode=mode,
            reinit="create_new",  # one run per policy in the same learner process
        )
        WandbTracker._open += 1
        self._groups: set[str] = set()
        self.run_dir = Path(self._run.dir).parent  # .../wandb/<offline-run-...>
        if mode == "offline":
            log.info("W&B run of %s kept offline in %s; `wandb sync %s` uploads it", policy, self.run_dir, self.run_dir)

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        row: dict[str, float] = {}
        for tag, value in values.items():
            group = group_of(tag)
            if group not in self._groups:
                self._groups.add(group)
                self._run.define_metric(f"{group}/step")
                self._run.define_metric(f"{group}/*" if group else "*", step_metric=f"{group}/step")
            row[f"{group}/step"] = step
            row[tag] = float(value)
        self._run.log(row)

    def close(self) -> None:
        import wandb

        self._run.finish()
        WandbTracker._open -= 1
        if WandbTracker._open == 0:
            wandb.teardown()  # finish() can return before wandb-core wrote the run's file; this waits until it has


class TrackioTracker:
    """A trackio run per policy in project ``fleetloop``, its database in ``trackio_dir`` (``TRACKIO_DIR`` wins;
    trackio reads it once, when first imported). ``trackio show --project fleetloop`` opens the dashboard."""

    def __init__(self, trackio_dir: Path, policy: str, config: Mapping[str, Any]) -> None:
        if "trackio" not in sys.modules:
            os.environ.setdefault("TRACKIO_DIR", str(trackio_dir))
        import trackio
        from trackio.utils import TRACKIO_DIR

        self.trackio_dir = Path(TRACKIO_DIR)
        self.trackio_dir.mkdir(parents=True, exist_ok=True)
        self._run = trackio.init(
            project="fleetloop", name=policy, config=dict(config), auto_log_cpu=False, auto_log_gpu=False
        )

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log({tag: float(v) for tag, v in values.items()}, step=int(step))

    def close(self) -> None:
        self._run.finish()
