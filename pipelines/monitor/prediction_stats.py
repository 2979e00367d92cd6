"""The statistics a baseline holds and a monitor compares, computed one way for both.

Per image, from the pixels exactly as the model sees them (inference/preprocess.py):
`brightness` (mean, 0..1), `contrast` (standard deviation), `sharpness` (mean absolute
difference of neighbouring pixels: noise raises it, blur lowers it) and, for colour models,
`channel_<c>_mean`; from the model's answer: `top1_confidence` and the categorical
`predicted_class`. Numeric statistics are compared by the population stability index over the
baseline's deciles and by the two-sample Kolmogorov-Smirnov statistic; the predicted classes by
the PSI over the classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BASELINE_FORMAT = 1
SAMPLE_SIZE = 2000  # baseline values kept per statistic (for KS and the plots)
EPS = 1e-4  # floor of a bin's share in the PSI (an empty bin is not infinitely surprising)
PREDICTED_CLASS = "predicted_class"


def image_statistics(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image statistics of uint8 ``[N, H, W, C]`` pixels."""
    x = pixels.astype(np.float32) / 255.0
    stats = {
        "brightness": x.mean(axis=(1, 2, 3)),
        "contrast": x.std(axis=(1, 2, 3)),
        "sharpness": 0.5
        * (
            np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3))
            + np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))
        ),
    }
    if x.shape[3] > 1:
        for c in range(x.shape[3]):
            stats[f"channel_{c}_mean"] = x[..., c].mean(axis=(1, 2))
    return stats


def prediction_statistics(probs: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({"top1_confidence": ...}, predicted class indices) of probabilities ``[N, K]``."""
    return {"top1_confidence": probs.max(axis=1)}, probs.argmax(axis=1)


def build_baseline(
    pixels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    image_size: Sequence[int],
    channels: int,
    source: Mapping[str, Any],
) -> dict[str, Any]:
    """The baseline document (baseline.json) of a split the model was evaluated on."""
    numeric = image_statistics(pixels)
    confidence, predicted = prediction_statistics(probs)
    numeric.update(confidence)
    rng = np.random.default_rng(0)
    doc_numeric = {}
    for name, values in numeric.items():
        values = values.astype(np.float64)
        sample = values if len(values) <= SAMPLE_SIZE else rng.choice(values, SAMPLE_SIZE, False)
        doc_numeric[name] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
            # deciles: the PSI bins, each holding a tenth of the baseline
            "deciles": [float(q) for q in np.quantile(values, np.linspace(0.1, 0.9, 9))],
            "sample": [round(float(v), 6) for v in sample],
        }
    counts = np.bincount(predicted, minlength=len(classes))
    return {
        "format": BASELINE_FORMAT,
        "count": int(len(pixels)),
        "source": dict(source),
        "model": {"classes": list(classes), "image_size": list(image_size), "channels": channels},
        # the sizes the model sees (every input is resized to them; originals are not kept)
        "image_size": {"height": int(image_size[0]), "width": int(image_size[1])},
        "numeric": doc_numeric,
        "categorical": {
            PREDICTED_CLASS: {"classes": list(classes), "counts": [int(c) for c in counts]}
        },
    }


def _shares(counts: np.ndarray) -> np.ndarray:
    total = max(float(counts.sum()), 1.0)
    return np.maximum(counts / total, EPS)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    e, a = _shares(np.asarray(expected, float)), _shares(np.asarray(actual, float))
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_psi(baseline: Mapping[str, Any], values: np.ndarray) -> float:
    edges = np.asarray(baseline["deciles"])
    expected = np.bincount(np.searchsorted(edges, baseline["sample"], side="right"), minlength=10)
    actual = np.bincount(np.searchsorted(edges, values, side="right"), minlength=10)
    return psi(expected, actual)


def ks_statistic(sample: Sequence[float], values: np.ndarray) -> float:
    """Largest distance between the two empirical distribution functions."""
    a = np.sort(np.asarray(sample, float))
    b = np.sort(np.asarray(values, float))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


@dataclass(frozen=True)
class Comparison:
    name: str
    kind: str  # "numeric" | "categorical"
    psi: float
    ks: float | None  # numeric only
    baseline_mean: float | None
    current_mean: float | None


def compare(
    baseline: Mapping[str, Any], numeric: Mapping[str, np.ndarray], predicted: np.ndarray
) -> list[Comparison]:
    """Every statistic of the current window against the baseline."""
    out = []
    for name, base in baseline["numeric"].items():
        if name not in numeric:
            continue
        values = np.asarray(numeric[name], float)
        out.append(
            Comparison(
                name,
                "numeric",
                numeric_psi(base, values),
                ks_statistic(base["sample"], values),
                base["mean"],
                float(values.mean()),
            )
        )
    base_counts = np.asarray(baseline["categorical"][PREDICTED_CLASS]["counts"], float)
    current = np.bincount(predicted, minlength=len(base_counts))[: len(base_counts)]
    out.append(
        Comparison(PREDICTED_CLASS, "categorical", psi(base_counts, current), None, None, None)
    )
    return out
