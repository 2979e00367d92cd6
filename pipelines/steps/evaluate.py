"""SageMaker Processing entry point of the evaluate step.

    python pipelines/steps/evaluate.py --model /opt/ml/processing/model \
        --dataset /opt/ml/processing/dataset --output /opt/ml/processing/evaluation
    python -m pipelines.steps.evaluate --model DIR --dataset DIR|s3://... --output DIR

`--model` is a folder holding ``model.tar.gz`` (what a Processing input of the training job's
artifact gives) or the extracted files, or the tarball itself. The model is loaded through
``inference.predictor`` (ONNX/TorchScript, no pickle) so evaluation sees exactly what the
endpoint will serve. Writes into `--output`:

    evaluation.json          SageMaker model-quality layout (docs/contracts.md), written last
    confusion_matrix.json    {true: {predicted: n}}
    confusion_matrix.png     heat map
    misclassified.png        most confidently misclassified test images
    saliency_<class>.png     input-gradient saliency of one sample per class

With ``MLFLOW_TRACKING_URI`` set, the metrics (prefixed ``test_``) and these files (artifact
path ``evaluation``) go into the training run named in metadata.json (``mlflow_run_id``), else
into a new run of ``MLFLOW_EXPERIMENT_NAME`` (default "lepton"). A tracking failure is a
warning: the gate only needs evaluation.json. Exit status: 0 done, 2 invalid input, 1 other.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a plain script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

Printer = Callable[[str], None]

EVALUATION_FILE = "evaluation.json"
CONFUSION_JSON = "confusion_matrix.json"
CONFUSION_PNG = "confusion_matrix.png"
MISCLASSIFIED_PNG = "misclassified.png"
MLFLOW_ARTIFACT_PATH = "evaluation"
MLFLOW_METRIC_PREFIX = "test_"
DEFAULT_EXPERIMENT = "lepton"
MODEL_TARBALL = "model.tar.gz"


class EvaluationError(RuntimeError):
    """Invalid input (model, dataset or their combination); the message says what is wrong."""


@dataclass(frozen=True)
class EvaluationResult:
    document: dict[str, Any]  # evaluation.json
    metrics: dict[str, float]  # flat scalars, unprefixed
    files: list[Path] = field(default_factory=list)  # everything written, evaluation.json last
    mlflow_run_id: str | None = None  # the model's training run, if metadata names one


def _say(message: str) -> None:
    print(f"evaluate: {message}", flush=True)


def tracking_from_env() -> tuple[str | None, str]:
    """(tracking URI or None, experiment name): the one place this step reads the environment."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or None
    return uri, os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def resolve_model_path(path: Path) -> Path:
    """A model dir (with metadata.json), or the ``model.tar.gz`` inside/at ``path``."""
    if path.is_file():
        return path
    if (path / "metadata.json").is_file():
        return path
    if (path / MODEL_TARBALL).is_file():
        return path / MODEL_TARBALL
    tarballs = sorted(path.glob("*.tar.gz")) if path.is_dir() else []
    if len(tarballs) == 1:
        return tarballs[0]
    raise EvaluationError(
        f"--model {path}: expected a folder with metadata.json + model.onnx, or {MODEL_TARBALL}"
    )


def safe_filename(name: str) -> str:
    """A class name made safe for a file name (``saliency_<class>.png``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "class"


def _check_compatible(meta: dict[str, Any], manifest: dict[str, Any]) -> None:
    model_classes = [str(c) for c in meta.get("classes", [])]
    data_classes = [str(c) for c in manifest["classes"]]
    if model_classes != data_classes:
        raise EvaluationError(
            f"the model's classes {model_classes[:10]} differ from the dataset's "
            f"{data_classes[:10]} (names or order): labels would be misread"
        )
    if [int(v) for v in meta["image_size"]] != [int(v) for v in manifest["image_size"]] or int(
        meta["channels"]
    ) != int(manifest["channels"]):
        raise EvaluationError(
            f"the model takes {meta['image_size']}x{meta['channels']} images, the dataset holds "
            f"{manifest['image_size']}x{manifest['channels']}"
        )


def predict_in_batches(predictor: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities ``[N, K]`` for uint8 ``[N, H, W, C]`` images."""
    parts = [
        predictor.predict_arrays(images[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts).astype(np.float64)


def _saliency_heat(predictor: Any, image: np.ndarray, class_index: int) -> np.ndarray:
    import io

    from PIL import Image

    png = predictor.saliency(image, class_index=class_index)
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.float64)


def evaluate(
    model: Path,
    dataset: str | Path,
    output: Path,
    split: str = "test",
    backend: str = "onnx",
    batch_size: int = 256,
    gallery_size: int = 16,
    max_saliency_classes: int = 20,
    out: Printer = _say,
) -> EvaluationResult:
    """Evaluate one exported model on one split and write the report files into ``output``."""
    from inference.predictor import Predictor
    from pipelines.evaluation import metrics as M
    from pipelines.evaluation import plots
    from training.shards import DatasetError, load_split, manifest_sha256, read_manifest

    started = time.monotonic()
    model_path = resolve_model_path(Path(model))
    out(f"loading model {model_path} (backend {backend})")
    try:
        predictor = Predictor.load(model_path, backend=backend)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as exc:
        raise EvaluationError(f"cannot load the model: {exc}") from exc
    meta = predictor.metadata
    try:
        manifest = read_manifest(dataset)
        _check_compatible(meta, manifest)
        images, labels = load_split(dataset, split, manifest=manifest)
        data_sha = manifest_sha256(dataset)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from exc
    if len(labels) == 0:
        raise EvaluationError(f"split {split!r} of {dataset} is empty: nothing to evaluate")
    classes = [str(c) for c in manifest["classes"]]
    out(f"{len(labels)} {split} images, {len(classes)} classes; predicting")

    probs = predict_in_batches(predictor, images, batch_size)
    m = M.compute_metrics(labels, probs, classes)
    predictions = probs.argmax(axis=1)
    trained_on = meta.get("data_manifest_sha256")
    if trained_on and trained_on != data_sha:
        out("note: this dataset's manifest differs from the one the model was trained on")
    model_info = {
        "classes": classes,
        "arch": meta.get("arch"),
        "backend": backend,
        "code_version": meta.get("code_version"),
        "data_manifest_sha256": trained_on,
        "mlflow_run_id": meta.get("mlflow_run_id"),
        "preprocessing_version": meta.get("preprocessing_version"),
        "training_metrics": meta.get("metrics", {}),
    }
    dataset_info = {
        "dataset": manifest.get("dataset"),
        "split": split,
        "count": m.count,
        "manifest_sha256": data_sha,
    }
    document = M.evaluation_document(m, model_info, dataset_info)

    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def write(name: str, data: bytes | str) -> None:
        path = output / name
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        written.append(path)

    write(CONFUSION_JSON, json.dumps(M.confusion_dict(m.confusion, classes), indent=2) + "\n")
    write(CONFUSION_PNG, plots.confusion_matrix_png(m.confusion, classes))
    errors = M.most_confident_errors(labels, probs, gallery_size)
    out(f"{int((predictions != labels).sum())} misclassified; gallery of {len(errors)}")
    write(
        MISCLASSIFIED_PNG,
        plots.misclassified_gallery_png(
            images[errors],
            labels[errors],
            predictions[errors],
            probs[errors, predictions[errors]],
            classes,
        ),
    )
    samples = M.sample_per_class(labels, probs, len(classes))
    chosen = sorted(samples.items())[:max_saliency_classes]
    if not (predictor.model_dir / "model.pt").is_file():
        out("no model.pt in the artifact: saliency maps skipped")
        chosen = []
    used_names: set[str] = set()
    for class_index, sample in chosen:
        name = safe_filename(classes[class_index])
        if name in used_names:
            name = f"{name}_{class_index}"
        used_names.add(name)
        heat = _saliency_heat(predictor, images[sample], class_index)
        title = (
            f"class {classes[class_index]}: predicted {classes[predictions[sample]]} "
            f"({probs[sample, predictions[sample]]:.2f})"
        )
        write(f"saliency_{name}.png", plots.saliency_png(images[sample], heat, title))
    if chosen:
        out(f"saliency maps for {len(chosen)} classes")
    write(EVALUATION_FILE, json.dumps(document, indent=2) + "\n")  # last: marks completion
    summary = M.summary_metrics(m)
    out(
        f"accuracy {m.accuracy:.4f}, macro F1 {m.macro_f1:.4f}, weighted F1 {m.weighted_f1:.4f}, "
        f"ECE {m.expected_calibration_error:.4f} ({time.monotonic() - started:.1f} s); "
        f"wrote {output / EVALUATION_FILE}"
    )
    run_id = meta.get("mlflow_run_id") or None
    return EvaluationResult(document, summary, written, run_id)


def log_to_mlflow(
    result: EvaluationResult,
    output: Path,
    tracking_uri: str,
    experiment: str,
    out: Printer = _say,
) -> str:
    """Log metrics and files into the training run (or a new run); returns the run id."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = result.mlflow_run_id
    created = False
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException:
            out(f"training run {run_id} not found on {tracking_uri}; logging to a new run")
            run_id = None
    if not run_id:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(
            experiment_id, run_name="evaluate", tags={"lepton.step": "evaluate"}
        )
        run_id, created = run.info.run_id, True
    now_ms = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(MLFLOW_METRIC_PREFIX + k, float(v), now_ms, 0) for k, v in result.metrics.items()
        ],
    )
    client.log_artifacts(run_id, str(output), artifact_path=MLFLOW_ARTIFACT_PATH)
    if created:
        client.set_terminated(run_id)
    out(f"logged to MLflow run {run_id} ({tracking_uri})")
    return run_id


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
    tracking_uri, experiment = tracking_from_env()
    if tracking_uri:
        try:
            log_to_mlflow(result, args.output, tracking_uri, experiment)
        except Exception as exc:  # noqa: BLE001 - tracking must not fail a finished evaluation
            print(f"evaluate: warning: MLflow logging failed: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
