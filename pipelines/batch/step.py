"""Entry point of the Batch step (a SageMaker Processing job).

    python3 -m pipelines.batch.step --model /opt/ml/processing/model \
        --input s3://in/prefix/ --output s3://out/prefix/ [BatchConfig fields as --name value]

`--model` is a folder holding ``model.tar.gz`` (a Processing input of the registered artifact)
or the extracted files; `--input` and `--output` are s3:// prefixes (or folders), read and
written directly so that a rerun skips what an earlier attempt finished (pipelines/batch/core.py).
An empty `--output` means `--default-output` (the pipeline's per-execution prefix). S3 is reached
with boto3's default chain (the job's role on AWS, the endpoint and keys the local runner passes).
Exit status: 0 done (bad images are reported per key, not failures), 2 invalid arguments or
model, 1 unexpected failure.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from pipelines.batch.config import BatchConfig
from pipelines.batch.core import BatchError, run_batch
from training.serialize import describe, from_args


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["-h"], ["--help"]):
        print(__doc__ + "\nfields:\n" + describe(BatchConfig))
        return 0
    from pipelines.evaluate.core import EvaluationError, resolve_model_path

    try:
        cfg = from_args(BatchConfig, args)
        if not cfg.input:
            raise ValueError("--input is empty: nothing to classify")
        model = resolve_model_path(Path(cfg.model))
        cfg = dataclasses.replace(cfg, model=str(model), output=cfg.output or cfg.default_output)
        if not cfg.output:
            raise ValueError("--output and --default-output are both empty")
    except (ValueError, EvaluationError) as exc:
        print(f"batch: error: {exc}", file=sys.stderr)
        return 2
    try:
        run_batch(cfg, settings=None)
    except BatchError as exc:
        print(f"batch: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from inference.quick_exit import quick_exit

    sys.exit(quick_exit(main()))
