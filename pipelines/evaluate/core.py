"""The Evaluate step's core: one exported model on one split -> evaluation.json and figures.

The model is loaded through ``inference.predictor`` (ONNX/TorchScript, no pickle), so
evaluation sees exactly what the endpoint will serve. Files written into the output folder:

    evaluation.json          SageMaker model-quality layout (docs/contracts.md), written last
    confusion_matrix.json    {true: {predicted: n}}
    confusion_matrix.png     heat map
    misclassified.png        most confidently misclassified test images
    saliency_<class>.png     input-gradient saliency of one sample per class
    baseline.json            the drift monitor's baseline: statistics of the split's images and
                             of the model's answers (pipelines/monitor/prediction_stats.py)
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.definition.names import BASELINE_FILE, EVALUATION_FILE

Printer = Callable[[str], None]

CONFUSION_JSON = "confusion_matrix.json"
CONFUSION_PNG = "confusion_matrix.png"
MISCLASSIFIED_PNG = "misclassified.png"
MODEL_TARBALL = "model.tar.gz"


class EvaluationError(RuntimeError):
    """Invalid input (model, dataset or their combination); the message says what is wrong."""


@dataclass(frozen=True)
class EvaluationResult:
    document: dict[str, Any]  # evaluation.json
    metrics: dict[str, float]  # flat scalars, unprefixed
    files: list[Path] = field(default_factory=list)  # everything written, evaluation.json last
    mlflow_run_id: str | None = None  # the model's training run, if metadata names one


@dataclass(frozen=True)
class _Inputs:
    """A loaded model and the split it is evaluated on."""

    predictor: Any  # inference.predictor.Predictor
    manifest: dict[str, Any]
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int [N]
    data_sha: str  # the dataset manifest's sha256

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.manifest["classes"]]


def say(message: str) -> None:
    print(f"evaluate: {message}", flush=True)


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


def _load(model: Path, dataset: str | Path, split: str, backend: str, out: Printer) -> _Inputs:
    from inference.predictor import Predictor
    from training.shards import DatasetError, load_split, manifest_sha256, read_manifest

    model_path = resolve_model_path(Path(model))
    out(f"loading model {model_path} (backend {backend})")
    try:
        predictor = Predictor.load(model_path, backend=backend)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as exc:
        raise EvaluationError(f"cannot load the model: {exc}") from exc
    try:
        manifest = read_manifest(dataset)
        _check_compatible(predictor.metadata, manifest)
        images, labels = load_split(dataset, split, manifest=manifest)
        data_sha = manifest_sha256(dataset)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from exc
    if len(labels) == 0:
        raise EvaluationError(f"split {split!r} of {dataset} is empty: nothing to evaluate")
    return _Inputs(predictor, manifest, images, labels, data_sha)


def _document(inputs: _Inputs, m: Any, split: str, backend: str, out: Printer) -> dict[str, Any]:
    from pipelines.evaluate import report

    meta = inputs.predictor.metadata
    trained_on = meta.get("data_manifest_sha256")
    if trained_on and trained_on != inputs.data_sha:
        out("note: this dataset's manifest differs from the one the model was trained on")
    model_info = {
        "classes": inputs.classes,
        "arch": meta.get("arch"),
        "backend": backend,
        "code_version": meta.get("code_version"),
        "data_manifest_sha256": trained_on,
        "mlflow_run_id": meta.get("mlflow_run_id"),
        "preprocessing_version": meta.get("preprocessing_version"),
        "training_metrics": meta.get("metrics", {}),
    }
    dataset_info = {
        "dataset": inputs.manifest.get("dataset"),
        "split": split,
        "count": m.count,
        "manifest_sha256": inputs.data_sha,
    }
    return report.evaluation_document(m, model_info, dataset_info)


def _figures(
    inputs: _Inputs, probs: np.ndarray, m: Any, gallery_size: int, max_saliency: int, out: Printer
) -> dict[str, bytes | str]:
    """confusion matrix (JSON + PNG), misclassified gallery, saliency maps: name -> content."""
    from pipelines.evaluate import plots, report

    classes, images, labels = inputs.classes, inputs.images, inputs.labels
    predictions = probs.argmax(axis=1)
    files: dict[str, bytes | str] = {
        CONFUSION_JSON: json.dumps(report.confusion_dict(m.confusion, classes), indent=2) + "\n",
        CONFUSION_PNG: plots.confusion_matrix_png(m.confusion, classes),
    }
    errors = report.most_confident_errors(labels, probs, gallery_size)
    out(f"{int((predictions != labels).sum())} misclassified; gallery of {len(errors)}")
    files[MISCLASSIFIED_PNG] = plots.misclassified_gallery_png(
        images[errors],
        labels[errors],
        predictions[errors],
        probs[errors, predictions[errors]],
        classes,
    )
    chosen = sorted(report.sample_per_class(labels, probs, len(classes)).items())[:max_saliency]
    if not (inputs.predictor.model_dir / "model.pt").is_file():
        out("no model.pt in the artifact: saliency maps skipped")
        chosen = []
    used_names: set[str] = set()
    for class_index, sample in chosen:
        name = safe_filename(classes[class_index])
        if name in used_names:
            name = f"{name}_{class_index}"
        used_names.add(name)
        heat = _saliency_heat(inputs.predictor, images[sample], class_index)
        title = (
            f"class {classes[class_index]}: predicted {classes[predictions[sample]]} "
            f"({probs[sample, predictions[sample]]:.2f})"
        )
        files[f"saliency_{name}.png"] = plots.saliency_png(images[sample], heat, title)
    if chosen:
        out(f"saliency maps for {len(chosen)} classes")
    return files


def _baseline(inputs: _Inputs, probs: np.ndarray, split: str) -> dict[str, Any]:
    from pipelines.monitor.prediction_stats import build_baseline

    meta = inputs.predictor.metadata
    source = {
        "dataset": inputs.manifest.get("dataset"),
        "split": split,
        "manifest_sha256": inputs.data_sha,
    }
    return build_baseline(
        inputs.images, probs, inputs.classes, meta["image_size"], int(meta["channels"]), source
    )


def evaluate(
    model: Path,
    dataset: str | Path,
    output: Path,
    split: str = "test",
    backend: str = "onnx",
    batch_size: int = 256,
    gallery_size: int = 16,
    max_saliency_classes: int = 20,
    out: Printer = say,
) -> EvaluationResult:
    """Evaluate one exported model on one split and write the report files into ``output``."""
    from training.metrics import compute_metrics, summary_metrics

    started = time.monotonic()
    inputs = _load(model, dataset, split, backend, out)
    out(f"{len(inputs.labels)} {split} images, {len(inputs.classes)} classes; predicting")
    probs = predict_in_batches(inputs.predictor, inputs.images, batch_size)
    m = compute_metrics(inputs.labels, probs, inputs.classes)
    document = _document(inputs, m, split, backend, out)
    files = _figures(inputs, probs, m, gallery_size, max_saliency_classes, out)
    files[BASELINE_FILE] = json.dumps(_baseline(inputs, probs, split)) + "\n"
    files[EVALUATION_FILE] = json.dumps(document, indent=2) + "\n"  # last: marks completion
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, data in files.items():
        path = output / name
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        written.append(path)
    out(
        f"accuracy {m.accuracy:.4f}, macro F1 {m.macro_f1:.4f}, weighted F1 {m.weighted_f1:.4f}, "
        f"ECE {m.expected_calibration_error:.4f} ({time.monotonic() - started:.1f} s); "
        f"wrote {output / EVALUATION_FILE}"
    )
    run_id = inputs.predictor.metadata.get("mlflow_run_id") or None
    return EvaluationResult(document, summary_metrics(m), written, run_id)
