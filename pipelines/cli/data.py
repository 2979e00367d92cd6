"""`lepton data import|prepare`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.settings import load_settings

if TYPE_CHECKING:
    from pipelines.prepare.config import PrepareConfig


def register(sub: argparse._SubParsersAction) -> None:
    from pipelines.prepare.config import PrepareConfig
    from training.serialize import add_config_options

    parser = sub.add_parser("data", help="import raw images and prepare datasets")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = actions.add_parser(
        "import",
        help="write mnist-5k, digits or a local ImageFolder as PNG files to an S3 prefix or folder",
    )
    imp.add_argument("source", help="mnist-5k | digits | path to a local ImageFolder")
    imp.add_argument(
        "dest", nargs="?", help="s3:// prefix or folder (default s3://<data bucket>/raw/<name>)"
    )
    imp.add_argument("--limit", type=int, help="import at most this many images (evenly sampled)")
    imp.add_argument("--threads", type=int, default=8, help="parallel uploads")
    imp.set_defaults(func=_import)
    prep = actions.add_parser(
        "prepare",
        help="validate, quarantine, dedupe, split and shard RAW into OUT (same code as the Prepare step)",
    )
    prep.add_argument("input", metavar="RAW", help="raw ImageFolder/.jsonl: path or s3://")
    prep.add_argument("output", metavar="OUT", help="dataset folder or s3:// prefix")
    add_config_options(prep, PrepareConfig, skip=("input", "output"))
    prep.set_defaults(func=_prepare)


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.prepare.importers import import_dataset

    settings = load_settings()
    name = Path(args.source.rstrip("/")).name
    dest = args.dest or f"s3://{settings.data_bucket}/raw/{name}"
    count = import_dataset(
        args.source, dest, settings, threads=args.threads, limit=args.limit, log=print
    )
    print(f"imported {count} files to {dest}")
    return 0


def prepare_config(args: argparse.Namespace) -> PrepareConfig:
    """RAW and OUT, then the PrepareConfig fields given as options."""
    from pipelines.prepare.config import PrepareConfig
    from training.serialize import config_from_namespace

    given = {"input": args.input, "output": args.output}
    return config_from_namespace(PrepareConfig, args, given=given)


def _prepare(args: argparse.Namespace) -> int:
    from pipelines.prepare.core import prepare

    result = prepare(prepare_config(args), load_settings(), log=print)
    if result.skipped:
        print(f"{result.output} is up to date: nothing to do")
    return 0
