"""Entry point of the Prepare step (a SageMaker Processing job).

    python3 -m pipelines.prepare.step --input /opt/ml/processing/input/raw \
        --output /opt/ml/processing/output/dataset [PrepareConfig fields as --name value]

`--input` is a folder, an s3:// prefix or a .jsonl manifest; `--output` a folder or s3:// prefix.
Arguments are the serialized `PrepareConfig` (training.serialize). S3 is reached with boto3's
default chain (the container's role on AWS; the endpoint and keys the local runner passes in
the environment locally). Exit status: 0 done or up to date, 2 invalid arguments, input or
output (clear message, no manifest written), 1 unexpected failure.
"""

from __future__ import annotations

import sys

from pipelines.prepare.config import PrepareConfig
from pipelines.prepare.core import prepare
from pipelines.prepare.errors import DataError
from training.serialize import describe, from_args


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["-h"], ["--help"]):
        print(__doc__ + "\nfields:\n" + describe(PrepareConfig))
        return 0
    try:
        cfg = from_args(PrepareConfig, args)
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
    from inference.quick_exit import quick_exit

    sys.exit(quick_exit(main()))
