"""Evaluation figures as PNG bytes (matplotlib, Agg backend: no display needed).

Each function builds one figure from arrays and returns its PNG encoding; nothing is written
to disk here. Images are uint8 ``[H, W, C]`` (C = 1 or 3) as stored in the dataset shards.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless; safe to call repeatedly
    import matplotlib.pyplot as plt

    return plt


def to_png(fig: Any) -> bytes:
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _show(ax: Any, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def confusion_matrix_png(cm: np.ndarray, classes: Sequence[str], title: str = "") -> bytes:
    """Heat map of counts, rows = true class, columns = predicted class.

    The same figure training logs to MLflow (one drawing of a confusion matrix).
    """
    from training.tracking import confusion_matrix_figure

    fig = confusion_matrix_figure(np.asarray(cm), [str(c) for c in classes])
    fig.axes[0].set_title(title or f"confusion matrix ({int(np.asarray(cm).sum())} samples)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def misclassified_gallery_png(
    images: np.ndarray,
    true_labels: Sequence[int],
    predicted_labels: Sequence[int],
    confidences: Sequence[float],
    classes: Sequence[str],
    columns: int = 4,
) -> bytes:
    """A grid of images titled ``true -> predicted (confidence)``; a note when there are none."""
    plt = pyplot()
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        return to_png(fig)
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t, p, conf in zip(
        axes.flat, images, true_labels, predicted_labels, confidences, strict=False
    ):
        ax.axis("on")
        _show(ax, image)
        ax.set_title(f"{classes[int(t)]} -> {classes[int(p)]}\n({float(conf):.2f})", fontsize=9)
    fig.suptitle("most confidently misclassified (true -> predicted)")
    return to_png(fig)


def saliency_png(image: np.ndarray, heat: np.ndarray, title: str) -> bytes:
    """The input beside its saliency map and an overlay; ``heat`` is 2-D, any scale."""
    plt = pyplot()
    heat = np.asarray(heat, dtype=np.float64)
    peak = heat.max() if heat.size else 0.0
    heat = heat / peak if peak > 0 else np.zeros_like(heat)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8), layout="constrained")
    _show(axes[0], image)
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(heat, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    axes[1].set_title("saliency", fontsize=9)
    _show(axes[2], image)
    axes[2].imshow(heat, cmap="inferno", vmin=0, vmax=1, alpha=0.55, interpolation="nearest")
    axes[2].set_title("overlay", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)
