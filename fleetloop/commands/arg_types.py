"""argparse types shared by several commands: each names the rule a value broke."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cloud.data.layout import DataLayout
from policies.model_roots import ENV as MODEL_ROOTS_ENV
from policies.model_roots import add_model_roots

log = logging.getLogger("fleetloop")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def mebibytes(mb: float) -> int:
    """A size flag given in MiB as bytes; -1 when it is not finite, which every size field of a config refuses."""
    return int(mb * (1 << 20)) if math.isfinite(mb) else -1


OPERATOR_FORMS = "scripted, none, keyboard or teleop:<config.yaml>"


def operator_choice(text: str) -> str:
    """``--operator``: one of OPERATOR_FORMS (the config file is read when the operator is built)."""
    if text in ("scripted", "none", "keyboard") or (text.startswith("teleop:") and len(text) > len("teleop:")):
        return text
    raise argparse.ArgumentTypeError(f"expected {OPERATOR_FORMS}, got {text!r}")


def port(text: str) -> int:
    """A TCP port to listen on: 1-65535, or 0 for any free one (the server logs which it got)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0-65535 (0: any free port), got {value}")
    return value


def cloud_address(text: str) -> str:
    """``host:port`` of the cloud (``[v6]:port`` for IPv6), with a port in 1-65535."""
    host, sep, number = text.rpartition(":")
    if not sep or not host.strip("[]") or not number.isdigit() or not 1 <= int(number) <= 65535:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT with a port in 1-65535, got {text!r}")
    return text


def data_folder(text: str) -> DataLayout:
    """``--root``: the cloud's data folder, never the episode store inside it."""
    layout = DataLayout(Path(text))
    problem = layout.root_problem()
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return layout


def shared_data(text: str) -> str:
    """``--store``: ``s3://bucket[/prefix]``, ``file://`` or a folder."""
    if text.startswith("s3://"):
        bucket = text[5:].split("/", 1)[0]
        if not 3 <= len(bucket) <= 63 or not bucket.replace("-", "").replace(".", "").isalnum():
            raise argparse.ArgumentTypeError(f"must be s3://BUCKET/PREFIX with a bucket name, got {text!r}")
    elif "://" in text and not text.startswith("file://"):
        raise argparse.ArgumentTypeError(f"must be s3://BUCKET/PREFIX, file:// or a folder, got {text!r}")
    return text


def add_root_arg(parser: argparse.ArgumentParser, shared: bool = False) -> None:
    """``--root`` means the same in every command: the folder ``fleetloop cloud`` keeps its data in. ``shared``:
    the command also reads or writes the store or the registry, which ``--store`` may put elsewhere."""
    parser.add_argument(
        "--root",
        type=data_folder,
        default="fleetloop-data",
        metavar="DIR",
        help="the cloud's data folder: store/, registry/, devices.json, certs/, learner/ (default fleetloop-data)",
    )
    if shared:
        parser.add_argument(
            "--store",
            type=shared_data,
            default="",
            metavar="URL",
            help="keep the episode store and the policy registry here instead of in --root, as store/ and registry/: "
            "s3://bucket/prefix (S3, MinIO: credentials and endpoint from the AWS_* variables) or a folder; "
            "credentials, certificates and the learner's key stay in --root",
        )


def attach_shared_data(args: argparse.Namespace) -> None:
    """Puts ``--store`` into the data folder's layout, so every part of the command finds the store there."""
    shared = vars(args).get("store", "")
    if shared:
        args.root = replace(args.root, shared=shared)


def add_repeatable(
    parser: argparse.ArgumentParser, flag: str, metavar: str, help: str, parse: Callable[[str], Any] = str
) -> None:
    """A flag given once per item (a dataset's setting, a source): its parsed values collect in a list."""
    parser.add_argument(flag, type=parse, action="append", default=[], metavar=metavar, help=f"{help}; repeatable")


def add_valued(
    parser: argparse.ArgumentParser,
    flag: str,
    parse: Callable[[str], Any],
    default: Any,
    help: str,
    metavar: str | None = None,
) -> None:
    """A flag that takes one value; its help ends with the default, where there is one."""
    shown = help if default is None else f"{help} (default {default:g})"
    parser.add_argument(flag, type=parse, default=default, metavar=metavar, help=shown)


def model_root(text: str) -> Path:
    """``--model-root``: a folder on this machine by absolute path."""
    path = Path(text)
    if not path.is_absolute() or not path.is_dir():
        raise argparse.ArgumentTypeError(f"must be a folder on this machine by absolute path, got {text!r}")
    return path


def add_model_root_arg(parser: argparse.ArgumentParser) -> None:
    """``--model-root`` on every command that builds lerobot policies from data (weights, configs, folders)."""
    add_repeatable(
        parser,
        "--model-root",
        "FOLDER",
        "a folder whose models (a VLA's VLM, a tokenizer) a policy config may name; none by default, so a config "
        f"naming any model folder is refused; adds to {MODEL_ROOTS_ENV}",
        model_root,
    )


def use_model_roots(args: argparse.Namespace) -> None:
    """This process's model roots, decided at start: ``FLEETLOOP_MODEL_ROOTS`` plus ``--model-root``; a ValueError
    names the flag or variable of a root that is not a folder."""
    roots = add_model_roots(args.model_root)
    if roots:
        log.info("policies may name model folders inside %s", ", ".join(str(root) for root in roots))
