"""Drift monitoring: captured traffic in a time window against the model's baseline.

`monitor(baseline, events, cfg)` decodes each captured request as the endpoint did
(inference/preprocess.py), takes the served answers from the captured responses, computes the
statistics of pipelines/monitor/prediction_stats.py and compares them with the baseline Evaluate
wrote. A statistic violates when its PSI or its KS statistic reaches the configured threshold;
fewer than `min_samples` images is "not enough data", never a crash. `write_report` writes
SageMaker Model Monitor's `constraint_violations.json`, a `monitoring_summary.json` and
`distributions.png`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.capture import CapturedEvent
from pipelines.monitor.prediction_stats import (
    PREDICTED_CLASS,
    Comparison,
    compare,
    image_statistics,
)
from training.serialize import option

NO_VIOLATIONS, VIOLATIONS, NOT_ENOUGH_DATA = "no_violations", "violations", "not_enough_data"
VIOLATIONS_FILE = "constraint_violations.json"  # Model Monitor's name and layout
SUMMARY_FILE = "monitoring_summary.json"
PLOT_FILE = "distributions.png"


@dataclass(frozen=True)
class MonitorConfig:
    # PSI >= 0.25 is the usual "significant shift"; KS: largest CDF distance
    psi_threshold: float = option(0.25, help="a statistic drifts when its PSI reaches this")
    ks_threshold: float = option(0.3, help="... or its Kolmogorov-Smirnov statistic this")
    # below ~100 images the PSI of 10 bins is mostly sampling noise (about 9 * (1/n + 1/m))
    min_samples: int = option(100, help="fewer captured images: not enough data")
    max_images: int = option(20000, help="read at most this many images of the window")


@dataclass
class MonitorResult:
    status: str
    images: int
    events: int
    unreadable: int  # captured requests that could not be decoded (skipped, counted)
    checks: list[dict[str, Any]] = field(default_factory=list)
    violations: list[dict[str, str]] = field(default_factory=list)
    window: dict[str, str] = field(default_factory=dict)


@dataclass
class Window:
    pixels: list[np.ndarray] = field(default_factory=list)  # uint8 [H, W, C] each
    predicted: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    events: int = 0
    unreadable: int = 0

    def numeric(self) -> dict[str, np.ndarray]:
        """Each numeric statistic over the window's images (what the baseline holds)."""
        numeric = image_statistics(np.stack(self.pixels))
        numeric["top1_confidence"] = np.asarray(self.confidence)
        return numeric

    def known_classes(self) -> np.ndarray:
        """Predicted class indices, answers naming a class the model does not have left out."""
        return np.asarray([p for p in self.predicted if p >= 0], dtype=np.int64)


def _instances(body: bytes, content_type: str, shape: tuple[int, int, int]) -> list[Any]:
    """The images of one captured request, read by the endpoint's own parsers
    (inference/codec.py, inference/jsonbody.py): encoded bytes or pixel arrays [H, W, C]."""
    from inference.codec import IMAGE_TYPES, JSON_TYPE, NPY_TYPE, load_npy, media_type
    from inference.config import ServerConfig
    from inference.jsonbody import parse_json

    kind = media_type(content_type)
    if kind in IMAGE_TYPES:
        return [body]
    if kind == NPY_TYPE:
        arr = load_npy(body)
        return list(arr) if arr.ndim == 4 else [arr]
    if kind == JSON_TYPE:
        cfg = ServerConfig()
        doc = parse_json(body, shape, cfg.max_batch, cfg.max_parse_bytes)
        return list(doc.batch) if doc.batch is not None else list(doc.instances)
    raise ValueError(f"content type {content_type!r} is not one the endpoint takes")


def collect(
    events: Iterable[CapturedEvent | ValueError],
    classes: Sequence[str],
    image_size: Sequence[int],
    channels: int,
    max_images: int,
) -> Window:
    """Pixels (as the model saw them) and answers of the captured requests."""
    from inference.config import DEFAULT_MAX_PIXELS
    from inference.preprocess import load_array

    index = {c: i for i, c in enumerate(classes)}
    size = (int(image_size[0]), int(image_size[1]))
    window = Window()
    for event in events:
        if len(window.pixels) >= max_images:
            break
        window.events += 1
        try:
            if isinstance(event, ValueError):
                raise event
            answers = json.loads(event.output)["predictions"]
            images = _instances(event.input, event.input_type, (*size, channels))
            if len(answers) != len(images):
                raise ValueError("answer count differs from the request's images")
            for image, answer in zip(images, answers, strict=True):
                if isinstance(image, bytes):
                    pixels = load_array(image, size, channels, DEFAULT_MAX_PIXELS)
                else:
                    pixels = np.clip(image, 0, 255).astype(np.uint8).reshape(*size, channels)
                window.pixels.append(pixels)
                window.predicted.append(index.get(str(answer["label"]), -1))
                window.confidence.append(float(answer["score"]))
        except Exception:  # noqa: BLE001 - an unreadable capture is counted, never fatal
            window.unreadable += 1
    return window


def monitor(
    baseline: dict[str, Any],
    window: Window,
    cfg: MonitorConfig,
    numeric: dict[str, np.ndarray] | None = None,
) -> MonitorResult:
    """The window against the baseline; `numeric` is `window.numeric()` when already computed."""
    count = len(window.pixels)
    result = MonitorResult(NOT_ENOUGH_DATA, count, window.events, window.unreadable)
    if count < cfg.min_samples:
        return result
    numeric = window.numeric() if numeric is None else numeric
    for c in compare(baseline, numeric, window.known_classes()):
        drifted = c.psi >= cfg.psi_threshold or (c.ks is not None and c.ks >= cfg.ks_threshold)
        result.checks.append({**asdict(c), "violation": drifted})
        if drifted:
            result.violations.append(_violation(c, cfg))
    result.status = VIOLATIONS if result.violations else NO_VIOLATIONS
    return result


def _violation(c: Comparison, cfg: MonitorConfig) -> dict[str, str]:
    parts = [f"PSI {c.psi:.3f} (threshold {cfg.psi_threshold})"]
    if c.ks is not None:
        parts.append(f"KS {c.ks:.3f} (threshold {cfg.ks_threshold})")
    if c.baseline_mean is not None and c.current_mean is not None:
        parts.append(f"mean {c.baseline_mean:.3f} -> {c.current_mean:.3f}")
    return {
        "feature_name": c.name,
        "constraint_check_type": "baseline_drift_check",
        "description": f"{c.name} drifted from the baseline: " + ", ".join(parts),
    }


def write_report(
    result: MonitorResult,
    baseline: dict[str, Any],
    window: Window,
    output: Path,
    numeric: dict[str, np.ndarray] | None = None,
) -> list[Path]:
    """constraint_violations.json, monitoring_summary.json and distributions.png."""
    from pipelines.monitor.plots import distributions_png

    output.mkdir(parents=True, exist_ok=True)
    files = {
        VIOLATIONS_FILE: json.dumps({"violations": result.violations}, indent=1) + "\n",
        SUMMARY_FILE: json.dumps(asdict(result), indent=1) + "\n",
    }
    written = []
    for name, text in files.items():
        (output / name).write_text(text)
        written.append(output / name)
    if window.pixels:
        numeric = window.numeric() if numeric is None else numeric
        counts = np.bincount(
            window.known_classes(),
            minlength=len(baseline["categorical"][PREDICTED_CLASS]["counts"]),
        )
        (output / PLOT_FILE).write_bytes(distributions_png(baseline, numeric, counts, result))
        written.append(output / PLOT_FILE)
    return written


def check(
    baseline: dict[str, Any],
    events: Iterable[CapturedEvent | ValueError],
    cfg: MonitorConfig,
    output: Path,
    window: dict[str, str] | None = None,
) -> MonitorResult:
    """Collect the window, compare it with the baseline, write the report into `output`."""
    model = baseline["model"]
    seen = collect(events, model["classes"], model["image_size"], model["channels"], cfg.max_images)
    numeric = seen.numeric() if seen.pixels else None  # computed once, for check and plot
    result = monitor(baseline, seen, cfg, numeric)
    result.window = dict(window or {})
    write_report(result, baseline, seen, output, numeric)
    return result


def summary_lines(result: MonitorResult) -> list[str]:
    lines = [
        f"monitor: {result.status} ({result.images} images from {result.events} captured "
        f"requests, {result.unreadable} unreadable)"
    ]
    for c in result.checks:
        ks = f", KS {c['ks']:.3f}" if c["ks"] is not None else ""
        lines.append(
            f"  {c['name']:<18} PSI {c['psi']:.3f}{ks}{'  VIOLATION' if c['violation'] else ''}"
        )
    return lines
