"""SageMaker Processing entry point of the prepare step.

    python pipelines/steps/prepare.py --input /opt/ml/processing/input/raw \
        --output /opt/ml/processing/output/dataset [options]
    python -m pipelines.steps.prepare --input s3://bucket/raw/mnist-5k --output s3://.../dataset

`--input` is a folder, an s3:// prefix or a .jsonl manifest; `--output` a folder or s3:// prefix.
S3 is reached with boto3's default chain (the container's role on AWS; the endpoint and keys
the local runner passes in the environment locally). Exit status: 0 done or up to date,
2 invalid input/output (clear message, no manifest written), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # a plain script: in a code bundle the packages sit beside it;
    _here = Path(__file__).resolve().parent  # in the repository they are two folders up
    if not (_here / "pipelines").is_dir():
        sys.path.insert(1, str(_here.parents[1]))

from pipelines.data.config import add_arguments, config_from_args  # noqa: E402
from pipelines.data.errors import DataError  # noqa: E402
from pipelines.data.prepare import prepare  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare",
        description="Validate, dedupe, split and shard raw labelled images into a dataset.",
    )
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    try:
        prepare(cfg, settings=None)
    except DataError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
