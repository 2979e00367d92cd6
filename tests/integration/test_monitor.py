"""The drift monitor on traffic in SageMaker's data-capture layout, with a baseline from a model
the project trained: held-out images give no violation; the same images inverted, rotated or
noisy give violations naming the statistics that moved; an empty window is not enough data.
(The endpoint writing the capture itself is tested end to end in tests/e2e.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from inference.capture import DataCapture, encode_event, hour_prefix, parse_event
from pipelines.monitor import core
from pipelines.monitor.prediction_stats import build_baseline
from pipelines.monitor.source import read_window

ENDPOINT, VARIANT = "ep", "AllTraffic"
NOW = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def model_and_splits(trained_model_dir: Path, tiny_dataset_dir: Path) -> tuple:
    from inference.predictor import Predictor
    from training.shards import load_split

    predictor = Predictor.load(trained_model_dir)
    # Baseline and traffic: two random halves of the held-out images (one distribution).
    held_out = np.concatenate([load_split(tiny_dataset_dir, s)[0] for s in ("test", "val")])
    order = np.random.default_rng(1).permutation(len(held_out))
    test, val = held_out[order[::2]], held_out[order[1::2]]
    meta = predictor.metadata
    baseline = build_baseline(
        test,
        predictor.predict_arrays(test),
        predictor.classes,
        meta["image_size"],
        meta["channels"],
        {"split": "test"},
    )
    return predictor, baseline, val


def _capture(folder: Path, predictor, images: np.ndarray) -> None:
    """What the endpoint's capture writes for one PNG request per image."""
    from pipelines.prepare.importers import png_bytes

    prefix = Path(hour_prefix(str(folder), ENDPOINT, VARIANT, NOW))
    prefix.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, image in enumerate(images):
        body = png_bytes(image[..., 0] if image.shape[-1] == 1 else image)
        label, score = predictor.predict_images([body], k=1)[0][0]
        answer = json.dumps({"predictions": [{"label": label, "score": score}]}).encode()
        when = NOW + timedelta(seconds=i % 60)
        lines.append(json.dumps(encode_event(body, "image/png", answer, "application/json", when)))
    lines.append("not a capture record")  # counted, never fatal
    (prefix / "00-00-000-x.jsonl").write_text("\n".join(lines) + "\n")


def _check(tmp_path: Path, predictor, baseline, images: np.ndarray) -> core.MonitorResult:
    capture = tmp_path / "capture"
    if len(images):
        _capture(capture, predictor, images)
    events = read_window(
        str(capture), ENDPOINT, VARIANT, NOW - timedelta(hours=1), NOW + timedelta(hours=1)
    )
    return core.check(baseline, events, core.MonitorConfig(), tmp_path / "report")


def test_held_out_images_do_not_drift(model_and_splits: tuple, tmp_path: Path) -> None:
    predictor, baseline, val = model_and_splits
    result = _check(tmp_path, predictor, baseline, val)
    assert result.status == core.NO_VIOLATIONS, result.checks
    assert result.images == len(val) and result.unreadable == 1
    report = tmp_path / "report"
    assert json.loads((report / core.VIOLATIONS_FILE).read_text()) == {"violations": []}
    summary = json.loads((report / core.SUMMARY_FILE).read_text())
    assert summary["status"] == "no_violations"
    assert {c["name"] for c in summary["checks"]} == {
        "brightness",
        "contrast",
        "sharpness",
        "top1_confidence",
        "predicted_class",
    }
    assert (report / core.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("inverted", {"brightness"}),
        ("rotated", {"top1_confidence"}),
        ("noisy", {"sharpness"}),
    ],
)
def test_changed_images_drift_and_the_report_names_what_moved(
    model_and_splits: tuple, tmp_path: Path, change: str, expected: set[str]
) -> None:
    predictor, baseline, val = model_and_splits
    rng = np.random.default_rng(0)
    images = {
        "inverted": lambda x: 255 - x,
        "rotated": lambda x: np.rot90(x, k=1, axes=(1, 2)).copy(),
        "noisy": lambda x: np.clip(x + rng.normal(0, 60, x.shape), 0, 255).astype(np.uint8),
    }[change](val)
    result = _check(tmp_path, predictor, baseline, images)
    assert result.status == core.VIOLATIONS
    named = {v["feature_name"] for v in result.violations}
    assert expected <= named, result.checks
    violations = json.loads((tmp_path / "report" / core.VIOLATIONS_FILE).read_text())["violations"]
    assert {v["constraint_check_type"] for v in violations} == {"baseline_drift_check"}
    print(change, {c["name"]: round(c["psi"], 2) for c in result.checks})


def test_no_traffic_is_not_enough_data(model_and_splits: tuple, tmp_path: Path) -> None:
    predictor, baseline, val = model_and_splits
    result = _check(tmp_path, predictor, baseline, val[:0])
    assert result.status == core.NOT_ENOUGH_DATA and result.images == 0
    summary = json.loads((tmp_path / "report" / core.SUMMARY_FILE).read_text())
    assert summary["status"] == "not_enough_data"
    few = _check(tmp_path / "few", predictor, baseline, val[:40])
    assert few.status == core.NOT_ENOUGH_DATA and few.images == 40


def test_capture_writes_the_layout_and_never_blocks(tmp_path: Path) -> None:
    written: dict[str, bytes] = {}
    capture = DataCapture("s3://b/capture", ENDPOINT, 100, written.__setitem__, flush_s=0.05)
    assert capture.offer(b"\x89PNG", "image/png", b'{"predictions": []}', "application/json")
    capture.close()
    ((uri, body),) = written.items()
    assert uri.startswith(f"s3://b/capture/{ENDPOINT}/{VARIANT}/") and uri.endswith(".jsonl")
    event = parse_event(body.splitlines()[0])
    assert event.input == b"\x89PNG" and event.output == b'{"predictions": []}'

    # Full queue: the request is dropped and counted, the caller is not held up.
    def stuck(_uri: str, _body: bytes) -> None:
        raise OSError("S3 is down")

    slow = DataCapture("s3://b/c", ENDPOINT, 100, stuck, max_events=2, flush_s=60)
    results = [slow.offer(b"x", "image/png", b"{}", "application/json") for _ in range(10)]
    assert results.count(True) <= 3 and slow.dropped >= 7
    off = DataCapture("s3://b/c", ENDPOINT, 0, stuck)
    assert not off.offer(b"x", "image/png", b"{}", "application/json") and off.captured == 0


def test_captured_bodies_are_read_as_the_endpoint_reads_them() -> None:
    """Every body form the endpoint takes yields its images; what it refuses is unreadable."""
    import base64
    import io

    from PIL import Image

    shape = (4, 4, 1)
    png = io.BytesIO()
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(png, format="PNG")
    b64 = base64.b64encode(png.getvalue()).decode()
    pixels = np.full(shape, 7, np.uint8).tolist()
    assert core._instances(png.getvalue(), "image/webp; q=1", shape) == [png.getvalue()]
    assert core._instances(json.dumps({"b64": b64}).encode(), "application/json", shape) == [
        png.getvalue()
    ]
    (bare,) = core._instances(json.dumps(pixels).encode(), "application/json", shape)
    assert bare.shape == shape and int(bare.max()) == 7
    two = json.dumps({"instances": [{"b64": b64}, pixels]}).encode()
    assert len(core._instances(two, "application/json", shape)) == 2
    with pytest.raises(ValueError):
        core._instances(json.dumps({"inputs": [pixels]}).encode(), "application/json", shape)
    with pytest.raises(ValueError):
        core._instances(b"x", "text/plain", shape)
