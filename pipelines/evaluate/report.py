"""The Evaluate step's documents: evaluation.json (SageMaker model-quality layout, see
docs/contracts.md) and the choice of images for the gallery and saliency maps (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from training.metrics import ClassificationMetrics

# SageMaker model-quality reports a standard deviation per metric; we do not bootstrap, and the
# contract (docs/contracts.md) fixes the placeholder to the string "NaN" (JSON has no NaN).
NO_STD = "NaN"
ACCURACY_PATH = ("multiclass_classification_metrics", "accuracy", "value")


def accuracy_of(document: Any) -> float | None:
    """The test accuracy an evaluation.json holds (what the gate reads), or None."""
    value: Any = document
    for key in ACCURACY_PATH:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def confusion_dict(cm: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{true_class: {predicted_class: count}}`` (SageMaker model-quality layout)."""
    return {
        str(t): {str(p): int(cm[i, j]) for j, p in enumerate(classes)}
        for i, t in enumerate(classes)
    }


def _value(v: float) -> dict[str, Any]:
    return {"value": float(v), "standard_deviation": NO_STD}


def evaluation_document(
    m: ClassificationMetrics,
    model_info: Mapping[str, Any],
    dataset_info: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``evaluation.json`` document (docs/contracts.md "evaluation.json")."""
    return {
        "multiclass_classification_metrics": {
            "accuracy": _value(m.accuracy),
            "weighted_f1": _value(m.weighted_f1),
            "macro_f1": _value(m.macro_f1),
            "weighted_precision": _value(m.weighted_precision),
            "weighted_recall": _value(m.weighted_recall),
            "expected_calibration_error": _value(m.expected_calibration_error),
            "confusion_matrix": confusion_dict(m.confusion, m.classes),
        },
        "per_class": {
            c: {
                "precision": m.precision[i],
                "recall": m.recall[i],
                "f1": m.f1[i],
                "support": m.support[i],
            }
            for i, c in enumerate(m.classes)
        },
        "model": dict(model_info),
        "dataset": dict(dataset_info),
    }


def most_confident_errors(labels: np.ndarray, probs: np.ndarray, limit: int) -> np.ndarray:
    """Indices of misclassified samples, most confident (in the wrong class) first."""
    predictions = probs.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    confidence = probs[wrong, predictions[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return wrong[order][: max(0, limit)]


def sample_per_class(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> dict[int, int]:
    """For each class present, one sample index: the most confident correct one, else the first."""
    predictions = probs.argmax(axis=1)
    chosen: dict[int, int] = {}
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if members.size == 0:
            continue
        correct = members[predictions[members] == c]
        if correct.size:
            chosen[c] = int(correct[np.argmax(probs[correct, c])])
        else:
            chosen[c] = int(members[0])
    return chosen
