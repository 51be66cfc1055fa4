"""``fleetloop import``: bring a local LeRobotDataset into the store as offline demonstrations.

(The trailing underscore: ``import`` is a Python keyword.)"""

from __future__ import annotations

import argparse
import logging
import os

from fleetloop.commands.arg_types import add_root_arg
from fleetloop.commands.refusals import refuses_bad_input

log = logging.getLogger("fleetloop")


@refuses_bad_input("import")
def cmd_import(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # reads a local dataset; nothing to fetch
    from cloud.data.lerobot_import import import_lerobot
    from cloud.data.store import EpisodeStore

    try:
        store = EpisodeStore(args.root.store_at)
    except RuntimeError as err:  # the one-writer lock: the cloud holds it
        raise ValueError(f"--root: {err}; stop the cloud first or import into another root") from err
    try:
        report = import_lerobot(
            store, args.from_dir, repo_id=args.repo_id, dataset=args.dataset, resource_id=args.resource
        )
    finally:
        store.close()
    log.info(
        "imported %d episodes (%d steps) of %s into %s as demonstrations from %s; %d were there already%s",
        report.imported,
        report.steps,
        report.repo_id,
        report.dataset,
        report.resource_id,
        report.skipped,
        f" (features not taken over: {', '.join(report.ignored)})" if report.ignored else "",
    )
    if report.kept_encoded:
        kept = ", ".join(f"{k} ({codec})" for k, codec in report.kept_encoded.items())
        log.info("videos stored as their packets, not decoded: %s", kept)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser("import", help="bring a local LeRobotDataset into the store as offline demonstrations")
    add_root_arg(imp, shared=True)
    imp.add_argument("--from", dest="from_dir", required=True, help="the LeRobotDataset's directory")
    imp.add_argument("--repo-id", default=None, help="its repo id (default: from its export, else local/<dir>)")
    imp.add_argument("--dataset", default=None, help="the store dataset (default: its robot type or name)")
    imp.add_argument("--resource", default=None, help="resource id of the steps (default import:<repo id>)")
    imp.set_defaults(func=cmd_import)
