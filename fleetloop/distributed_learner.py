"""``fleetloop-learner``: the learner alone, on one process or several under ``torchrun`` (DDP).

See ``cloud.learning.distributed`` for how the ranks share the work.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from cloud.learning.distributed import init_from_env, trace_writer
from fleetloop.commands.arg_types import add_root_arg, attach_shared_data, use_model_roots
from fleetloop.commands.learner import add_learner_args, learner_config, run_learner
from fleetloop.commands.stopping import exit_after_clean_stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fleetloop-learner", description="the learner, on one process or several under torchrun (DDP)"
    )
    add_root_arg(parser, shared=True)
    parser.add_argument("--backend", choices=["gloo", "nccl"], help="default: nccl with CUDA, else gloo")
    parser.add_argument(
        "--rounds", type=int, default=0, help="stop after this many rounds that trained (default 0: run until stopped)"
    )
    parser.add_argument(
        "--trace-params",
        metavar="DIR",
        help="append each rank's parameter digest after every step to DIR/rank<N>.jsonl (for checks)",
    )
    add_learner_args(parser)
    args = parser.parse_args(argv)
    attach_shared_data(args)
    try:
        use_model_roots(args)
        config = learner_config(args)
    except ValueError as err:
        parser.error(str(err))
    context = init_from_env(args.backend)
    try:
        on_step = (
            trace_writer(Path(args.trace_params) / f"rank{context.rank}.jsonl", context.rank)
            if (args.trace_params)
            else None
        )
        run_learner(
            args.root,
            config,
            stop=threading.Event() if args.rounds else None,
            log_plain=False,
            dist=context,
            on_step=on_step,
            max_rounds=args.rounds,
        )
        context.finish()
    finally:
        context.close()
    if context.distributed:  # its versions are published: skip a teardown that gloo's threads can abort
        exit_after_clean_stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
