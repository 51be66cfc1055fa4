"""``fleetloop export``: write store episodes as a LeRobotDataset v3 (lerobot's own writer)."""

from __future__ import annotations

import argparse
import logging
import os

from fleetloop.commands.arg_types import add_root_arg
from fleetloop.commands.refusals import refuses_bad_input

log = logging.getLogger("fleetloop")


@refuses_bad_input("export")
def cmd_export(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # writes a local dataset; nothing to fetch
    from cloud.data.lerobot_export import Selection, export_lerobot
    from cloud.data.store_union import StoreUnion

    layout = args.root
    if not layout.has_store():
        flag = "--store" if layout.shared else "--root"
        raise ValueError(f"{flag}: no episode store in {layout.shared or layout.root} (looked for {layout.store_at})")
    selection = Selection(
        episode_ids=tuple(args.episodes),
        resource_ids=tuple(args.resource),
        sources=tuple(args.source),
        unfinished=args.include_unfinished,
    )
    store = StoreUnion(layout.store_at)  # every gateway's partition; read only: works while the cloud writes
    try:
        report = export_lerobot(
            store, args.dataset, args.out, repo_id=args.repo_id, fps=args.fps, selection=selection, video=args.video
        )
    finally:
        store.close()
    log.info(
        "exported %d episodes (%d frames, %d fps from %s) of %s to %s as LeRobotDataset %s",
        report.episodes,
        report.frames,
        report.fps,
        "--fps" if report.fps_from == "flag" else "the step timestamps",
        report.dataset,
        report.out,
        report.repo_id,
    )
    if report.kept_encoded:
        kept = ", ".join(f"{c} ({codec})" for c, codec in report.kept_encoded.items())
        log.info("cameras whose video files are the stored packets, not re-encoded: %s", kept)
    return 0


def _positive_fps(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be a whole number of frames per second in 1-1000, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="write store episodes as a LeRobotDataset v3 (lerobot's own writer)")
    add_root_arg(export, shared=True)
    export.add_argument("--dataset", required=True, help="the store dataset (embodiment), e.g. panda_pick_cube")
    export.add_argument("--out", required=True, help="a new directory for the LeRobotDataset")
    export.add_argument("--repo-id", default=None, help="the dataset's repo id (default fleetloop/<dataset>)")
    export.add_argument("--episodes", nargs="+", action="extend", default=[], help="only these episode ids")
    export.add_argument("--resource", nargs="+", action="extend", default=[], help="only these resources' episodes")
    export.add_argument("--source", nargs="+", action="extend", default=[], help="only these sources (sim, robot...)")
    export.add_argument("--include-unfinished", action="store_true", help="also episodes that have not ended")
    export.add_argument("--fps", type=_positive_fps, default=None, help="default: from the steps' timestamps")
    export.add_argument(
        "--video",
        action="store_true",
        help="encode raw and JPEG cameras as AV1 video (lossy) instead of PNG; H.264/AV1 cameras always go "
        "as video, their stored packets unchanged",
    )
    export.set_defaults(func=cmd_export)
