"""Final evaluation of a trained network on a whole split (plain torch + numpy, rank 0).

Metrics are `training.metrics`, the same code the Evaluate step reports with."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from training.metrics import compute_metrics


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
    logits_t = torch.from_numpy(logits)
    labels_t = torch.from_numpy(labels.astype(np.int64))
    loss = float(nn.functional.cross_entropy(logits_t, labels_t))
    probs = torch.softmax(logits_t, dim=1).numpy()
    m = compute_metrics(labels, probs, [str(k) for k in range(num_classes)])
    metrics = {
        "accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        "weighted_f1": m.weighted_f1,
        "loss": loss,
    }
    return {"metrics": metrics, "confusion_matrix": m.confusion}
