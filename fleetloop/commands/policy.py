"""``fleetloop policy``: list a policy's published versions, roll back to an earlier one, publish a policy trained
elsewhere (a lerobot ``pretrained_model`` folder or a fleetloop weights file) as the next version, or sign the
versions a registry holds from before versions were signed. Whatever it publishes carries the learner's signature."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from fleetloop.commands.arg_types import add_model_root_arg, add_repeatable, add_root_arg, positive_int, use_model_roots
from fleetloop.commands.refusals import refuses_bad_input

log = logging.getLogger("fleetloop")

PUBLISH_FLAGS = {"source": "--from", "robot": "--robot", "dataset": "--dataset", "input": "--input"}


def input_map(text: str) -> tuple[str, list[str]]:
    """``FEATURE=NAME[,NAME...]`` -> (lerobot input feature, the robot observations that feed it)."""
    feature, sep, names = text.partition("=")
    listed = [n.strip() for n in names.split(",") if n.strip()]
    if not sep or not feature.strip() or not listed:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not FEATURE=OBSERVATION[,...] (e.g. observation.images.top=front)"
        )
    return feature.strip(), listed


@refuses_bad_input("policy {action}")
def cmd_policy(args: argparse.Namespace) -> int:
    from cloud.data.learner_key import signing_registry
    from cloud.data.version_registry import PolicyRegistry

    # What it writes is signed with the learner's key (made here the first time); a listing needs no key.
    registry = PolicyRegistry(args.root.registry_at) if args.action == "list" else signing_registry(args.root)
    if args.action == "publish":
        use_model_roots(args)  # a lerobot folder's config may name its VLM or tokenizer folder
        return _publish(args, registry)
    given = [flag for field, flag in PUBLISH_FLAGS.items() if getattr(args, field)]
    if given:
        raise ValueError(f"{given[0]}: only `fleetloop policy publish` takes it")
    if args.action == "sign":
        return _sign(args, registry)
    if args.action == "rollback":
        version = registry.rollback(args.name, args.to)
        rolled_back_to = version.note.removeprefix("rollback to ")
        log.info(
            "%s v%d published with the weights of %s; edges take it next", args.name, version.version, rolled_back_to
        )
        return 0
    latest = registry.latest(args.name)
    if latest is None:
        raise ValueError(f"policy_name: no versions of {args.name!r}")
    for number in registry.versions(args.name):
        marker = " (latest)" if number == latest.version else ""
        record = latest if number == latest.version else registry.describe(args.name, number)
        note = record.note if record is not None else ""
        print(f"v{number}{marker}{': ' + note if note else ''}")
    return 0


def _sign(args: argparse.Namespace, registry) -> int:
    """Signs every version of the policy that carries no valid signature (published before fleetloop signed
    versions): the lab vouches for them by running this on its own data folder."""
    if args.to is not None:
        raise ValueError("--to: only `fleetloop policy rollback` takes it")
    numbers = registry.versions(args.name)
    if not numbers:
        raise ValueError(f"policy_name: no versions of {args.name!r}")
    signed = [number for number in numbers if registry.sign_again(args.name, number)]
    if signed:
        log.info("%s: signed %s with the learner's key; edges take them again", args.name, _listed(signed))
    else:
        log.info("%s: every version was signed by the learner already", args.name)
    return 0


def _listed(numbers: list[int]) -> str:
    return ", ".join(f"v{number}" for number in numbers)


def _publish(args: argparse.Namespace, registry) -> int:
    # A folder's config may name hub files: nothing is downloaded. Set before lerobot (and huggingface_hub, which reads
    # it once) is imported, by a lerobot robot's config or by the folder's policy type.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cloud.data.policy_import import publish_policy
    from cloud.data.version_registry import check_policy_name

    check_policy_name(args.name)
    if args.source is None:
        raise ValueError("--from: name the lerobot pretrained_model folder or fleetloop weights file to publish")
    if args.to is not None:
        raise ValueError("--to: only `fleetloop policy rollback` takes it")
    spec = _target_spec(args)
    try:
        version, what = publish_policy(registry, args.name, args.source, spec, dict(args.input) or None)
    except ValueError as err:
        raise ValueError(f"--from {args.source}: {err}") from None
    log.info(
        "%s v%d published from %s (%s), checked against %s; edges running %s take it next",
        args.name,
        version.version,
        args.source,
        what,
        spec.label,
        args.name,
    )
    return 0


def _target_spec(args: argparse.Namespace):
    """The spec the policy must fit: the robot of ``--robot``, else the dataset of ``--dataset`` (default: the
    dataset named like the policy) in the data folder's episode store."""
    from cloud.data.policy_import import dataset_spec
    from cloud.data.store_union import StoreUnion
    from hal.drivers import driver_capabilities
    from policies.spec import PolicySpec

    if args.robot and args.dataset:
        raise ValueError("--dataset: give the robot (--robot) or the dataset it recorded (--dataset), not both")
    if args.robot:
        try:
            return PolicySpec.from_capabilities(driver_capabilities(args.robot))
        except (ValueError, ImportError, OSError) as err:
            raise ValueError(f"--robot {args.robot}: {err}") from None
    dataset = args.dataset or args.name
    flag = "--dataset" if args.dataset else "--robot or --dataset"
    if not args.root.has_store():
        why = f"no episode store in {args.root.root} to take dataset {dataset}'s observations from"
        raise ValueError(f"{flag}: {why}; name the robot (e.g. --robot sim:panda_pick_cube)")
    store = StoreUnion(args.root.store_at)
    try:
        return dataset_spec(store, dataset)
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None
    finally:
        store.close()


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser(
        "policy",
        help="list a policy's versions, roll back to an earlier one, publish one trained elsewhere, or sign versions "
        "published before fleetloop signed them",
    )
    policy.add_argument("action", choices=["list", "rollback", "publish", "sign"])
    policy.add_argument("name", help="the policy, e.g. panda_pick_cube")
    add_root_arg(policy, shared=True)
    policy.add_argument("--to", type=positive_int, default=None, help="version to go back to (default: previous)")
    policy.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="DIR|FILE",
        help="publish: a lerobot pretrained_model folder (config.json, model.safetensors, processors) or a "
        "fleetloop weights file",
    )
    policy.add_argument(
        "--robot", default=None, help="publish: check it against this robot (sim:<task>, ros2:<yaml>, lerobot:<yaml>)"
    )
    policy.add_argument(
        "--dataset", default=None, help="publish: check it against this dataset's robots (default: the policy's name)"
    )
    add_repeatable(
        policy,
        "--input",
        "FEATURE=OBSERVATION[,...]",
        "publish: the robot observations that feed a lerobot input feature (default: cameras by name, state vectors "
        "in name order)",
        input_map,
    )
    add_model_root_arg(policy)
    policy.set_defaults(func=cmd_policy)
