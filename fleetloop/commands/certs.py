"""``fleetloop certs``: create the CA and the cloud's TLS certificate."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fleetloop.commands.arg_types import add_root_arg
from fleetloop.commands.refusals import refuses_bad_input

log = logging.getLogger("fleetloop")


@refuses_bad_input("certs {action}")
def cmd_certs(args: argparse.Namespace) -> int:
    from cloud.data.learner_key import learner_signer
    from cloud.security.certs import ca_fingerprint, init_certs, server_hosts

    directory = Path(args.certs) if args.certs else args.root.certs
    paths = init_certs(directory, tuple(args.host), force=args.force)
    learner_signer(args.root)  # kept if there is one: a new key would orphan every version signed so far
    public = args.root.learner_public_key
    log.info(
        "created a CA (%s) and the cloud's certificate for %s; copy %s and %s (the learner's key that signs every "
        "policy version) to every robot and pass --ca %s (the edge finds %s beside it)",
        paths.ca,
        ", ".join(server_hosts(paths.server_cert)),
        paths.ca.name,
        public,
        paths.ca.name,
        public.name,
    )
    log.info("the CA vouches only for those names; its SHA-256 fingerprint: %s", ca_fingerprint(paths.ca))
    log.info(
        "the CA's key is %s: the cloud never reads it; keep it offline (it signs what devices trust)", paths.ca_key
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    certs = sub.add_parser("certs", help="create the CA and the cloud's TLS certificate")
    certs.add_argument("action", choices=["init"])
    add_root_arg(certs)
    certs.add_argument("--certs", default=None, help="where to write them (default <root>/certs)")
    certs.add_argument(
        "--host", action="append", default=[], help="a name or address edges use to reach the cloud (repeat)"
    )
    certs.add_argument("--force", action="store_true", help="replace existing certificates")
    certs.set_defaults(func=cmd_certs)
