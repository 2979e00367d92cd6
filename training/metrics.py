"""Classification metrics from labels and class probabilities (numpy only).

The one implementation of the confusion matrix, F1 and calibration: training's final
evaluation and the Evaluate step both call :func:`compute_metrics`. All functions are pure.
``labels`` are int class indices ``[N]``, ``probs`` float ``[N, K]`` rows summing to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# 15 equal-width confidence bins: the common choice since Guo et al. 2017 ("On Calibration of
# Modern Neural Networks"), so ECE values compare with published ones.
DEFAULT_ECE_BINS = 15


@dataclass(frozen=True)
class ClassificationMetrics:
    """Everything the evaluate step reports, computed once from (labels, probs)."""

    classes: tuple[str, ...]
    count: int  # number of evaluated samples
    accuracy: float
    macro_f1: float
    weighted_f1: float
    weighted_precision: float
    weighted_recall: float
    expected_calibration_error: float  # on 0..1 (fraction), DEFAULT_ECE_BINS bins
    precision: tuple[float, ...]  # per class, index order; 0.0 when never predicted
    recall: tuple[float, ...]  # per class; 0.0 when absent from the labels
    f1: tuple[float, ...]
    support: tuple[int, ...]  # per class count of true labels
    confusion: np.ndarray  # int64 [K, K]: rows true class, columns predicted class


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 ``[K, K]`` counts; row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must be [N]")
    for name, arr in (("labels", labels), ("predictions", predictions)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}")
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num/den with 0 where den == 0 (sklearn's zero_division=0 convention)."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, f1, support) per class from a confusion matrix."""
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return precision, recall, f1, support


def expected_calibration_error(
    labels: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> float:
    """ECE of the top-class confidence: sum over bins of |accuracy - confidence| x bin share."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    # Bins (lo, hi]; a confidence of exactly 0 goes to the first bin.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = index == b
        if mask.any():
            ece += abs(correct[mask].mean() - confidence[mask].mean()) * mask.mean()
    return float(ece)


def compute_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    n_bins: int = DEFAULT_ECE_BINS,
) -> ClassificationMetrics:
    """All metrics of one evaluation. Raises ValueError on empty or mis-shaped input."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(classes)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(f"probs must be [N, {num_classes}], got {list(probs.shape)}")
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels but {len(probs)} rows of probabilities")
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    predictions = probs.argmax(axis=1)
    cm = confusion_matrix(labels, predictions, num_classes)
    precision, recall, f1, support = per_class_scores(cm)
    weights = support / support.sum()
    present = support > 0  # macro F1 over classes that occur (sklearn averages over labels seen)
    predicted_or_present = present | (cm.sum(axis=0) > 0)
    return ClassificationMetrics(
        classes=tuple(str(c) for c in classes),
        count=int(len(labels)),
        accuracy=float(np.trace(cm) / cm.sum()),
        macro_f1=float(f1[predicted_or_present].mean()),
        weighted_f1=float((f1 * weights).sum()),
        weighted_precision=float((precision * weights).sum()),
        weighted_recall=float((recall * weights).sum()),
        expected_calibration_error=expected_calibration_error(labels, probs, n_bins),
        precision=tuple(float(v) for v in precision),
        recall=tuple(float(v) for v in recall),
        f1=tuple(float(v) for v in f1),
        support=tuple(int(v) for v in support),
        confusion=cm,
    )


def summary_metrics(m: ClassificationMetrics) -> dict[str, float]:
    """Flat scalar metrics (for MLflow and progress output), without prefix."""
    return {
        "accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        "weighted_f1": m.weighted_f1,
        "weighted_precision": m.weighted_precision,
        "weighted_recall": m.weighted_recall,
        "expected_calibration_error": m.expected_calibration_error,
    }
