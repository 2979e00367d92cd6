"""Entry point of the Evaluate step (a SageMaker Processing job).

    python3 -m pipelines.evaluate.step --model /opt/ml/processing/model \
        --dataset /opt/ml/processing/dataset --output /opt/ml/processing/evaluation

`--model` is a folder holding ``model.tar.gz`` (what a Processing input of the training job's
artifact gives) or the extracted files, or the tarball itself; `--dataset` a prepared dataset
folder or s3:// prefix. Writes evaluation.json and figures (pipelines/evaluate/core.py).

With ``MLFLOW_TRACKING_URI`` set, the metrics (prefixed ``test_``) and these files (artifact
path ``evaluation``) go into the training run named in metadata.json (``mlflow_run_id``), else
into a new run of the experiment (``MLFLOW_EXPERIMENT_NAME``). A tracking failure is a warning:
the gate only needs evaluation.json. Exit status: 0 done, 2 invalid input, 1 other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.evaluate.core import EvaluationError, evaluate
from pipelines.settings import load_settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate", description="Evaluate an exported model on a dataset split."
    )
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="folder holding model.tar.gz or the extracted model files",
    )
    p.add_argument("--dataset", required=True, help="prepared dataset folder or s3:// prefix")
    p.add_argument("--output", type=Path, required=True, help="folder for evaluation.json etc.")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--backend", default="onnx", choices=("onnx", "torchscript"))
    p.add_argument("--batch-size", type=int, default=256, help="images per model call")
    p.add_argument("--gallery-size", type=int, default=16, help="misclassified images shown")
    p.add_argument(
        "--max-saliency-classes",
        type=int,
        default=20,
        help="saliency maps for at most this many classes",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(
            args.model,
            args.dataset,
            args.output,
            split=args.split,
            backend=args.backend,
            batch_size=args.batch_size,
            gallery_size=args.gallery_size,
            max_saliency_classes=args.max_saliency_classes,
        )
    except EvaluationError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    settings = load_settings()
    if settings.tracking_uri_override:
        from pipelines.evaluate.tracking import log_to_mlflow

        try:
            log_to_mlflow(
                result, args.output, settings.tracking_uri_override, settings.experiment_name
            )
        except Exception as exc:  # noqa: BLE001 - tracking must not fail a finished evaluation
            print(f"evaluate: warning: MLflow logging failed: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from inference.quick_exit import quick_exit

    sys.exit(quick_exit(main()))
