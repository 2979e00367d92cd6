"""Final evaluation of a trained network on a whole split (plain torch + numpy, rank 0)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn


def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """fp32 logits ``[N, K]`` for uint8 images ``[N, H, W, C]`` (model normalises itself)."""
    model = model.eval()
    device = next(model.parameters()).device
    outputs: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            x = chunk.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32)
            outputs.append(model(x).float().cpu().numpy())
    if not outputs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outputs)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K, K]`` counts, rows = true class, columns = predicted class."""
    flat = labels.astype(np.int64) * num_classes + preds.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(matrix: np.ndarray) -> dict[str, float]:
    """accuracy, macro F1 and weighted F1 from a confusion matrix."""
    total = matrix.sum()
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() else 0.0,
    }


def evaluate_split(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Metrics, confusion matrix and mean loss of ``model`` on one split."""
    logits = predict_logits(model, images, batch_size)
    if len(labels) == 0:
        return {"metrics": {}, "confusion_matrix": np.zeros((num_classes, num_classes), int)}
    preds = logits.argmax(axis=1)
    matrix = confusion_matrix(labels, preds, num_classes)
    loss = float(
        nn.functional.cross_entropy(
            torch.from_numpy(logits), torch.from_numpy(labels.astype(np.int64))
        )
    )
    metrics: Mapping[str, float] = {**classification_metrics(matrix), "loss": loss}
    return {"metrics": dict(metrics), "confusion_matrix": matrix}
