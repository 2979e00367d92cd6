"""Evaluation metrics against scikit-learn, the plots."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from pipelines.evaluate import plots
from pipelines.evaluate import report as R
from training import metrics as M

CLASSES = ["cat", "dog", "bird", "fish"]


def _random_case(seed: int, n: int = 300, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += rng.uniform(0, 3)  # mostly right, not always
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed: int) -> None:
    labels, probs = _random_case(seed)
    preds = probs.argmax(axis=1)
    m = M.compute_metrics(labels, probs, CLASSES)
    assert m.accuracy == pytest.approx(accuracy_score(labels, preds))
    assert m.macro_f1 == pytest.approx(f1_score(labels, preds, average="macro"))
    assert m.weighted_f1 == pytest.approx(f1_score(labels, preds, average="weighted"))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=range(4), zero_division=0)
    np.testing.assert_allclose(m.precision, p)
    np.testing.assert_allclose(m.recall, r)
    np.testing.assert_allclose(m.f1, f)
    assert list(m.support) == list(s)
    np.testing.assert_array_equal(m.confusion, sk_confusion_matrix(labels, preds, labels=range(4)))


def test_absent_class_and_never_predicted_class_give_zero_not_nan() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0, 0], [0.2, 0.8, 0, 0], [0.1, 0.9, 0, 0], [0.3, 0.7, 0, 0]])
    m = M.compute_metrics(labels, probs, CLASSES)
    assert m.precision[2] == 0.0 and m.recall[3] == 0.0 and m.support[2] == 0
    assert m.macro_f1 == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))
    assert all(np.isfinite(v) for v in (m.macro_f1, m.weighted_f1, m.expected_calibration_error))


def test_ece_known_values() -> None:
    labels = np.zeros(10, dtype=np.int64)
    # Confidence 1.0 and always right: perfectly calibrated.
    assert M.expected_calibration_error(labels, np.tile([1.0, 0.0], (10, 1))) == 0.0
    # Confidence 0.8, right 50% of the time: ECE = |0.5 - 0.8| = 0.3.
    probs = np.tile([0.8, 0.2], (10, 1))
    probs[5:] = [0.2, 0.8]
    assert M.expected_calibration_error(labels, probs) == pytest.approx(0.3)


def test_errors_on_bad_input() -> None:
    with pytest.raises(ValueError, match="no samples"):
        M.compute_metrics(np.zeros(0, int), np.zeros((0, 4)), CLASSES)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        M.compute_metrics(np.zeros(3, int), np.zeros((3, 3)), CLASSES)
    with pytest.raises(ValueError, match="0..3"):
        M.confusion_matrix(np.array([0, 4]), np.array([0, 1]), 4)


def test_evaluation_document_layout_is_json_and_contract_shaped() -> None:
    labels, probs = _random_case(3)
    m = M.compute_metrics(labels, probs, CLASSES)
    doc = json.loads(json.dumps(R.evaluation_document(m, {"arch": "x"}, {"split": "test"})))
    mcm = doc["multiclass_classification_metrics"]
    for key in ("accuracy", "weighted_f1", "macro_f1", "expected_calibration_error"):
        assert mcm[key]["value"] == pytest.approx(getattr(m, key))
        assert mcm[key]["standard_deviation"] == "NaN"
    assert sum(sum(row.values()) for row in mcm["confusion_matrix"].values()) == len(labels)
    assert mcm["confusion_matrix"]["dog"]["dog"] == int(m.confusion[1, 1])
    assert set(doc["per_class"]) == set(CLASSES) and doc["model"] == {"arch": "x"}


def test_error_gallery_and_per_class_samples() -> None:
    labels = np.array([0, 1, 1, 2])
    probs = np.array([[0.6, 0.4, 0], [0.95, 0.05, 0], [0.1, 0.9, 0], [0.3, 0.7, 0]])
    assert R.most_confident_errors(labels, probs, 10).tolist() == [1, 3]
    assert R.most_confident_errors(labels, probs, 1).tolist() == [1]
    assert R.sample_per_class(labels, probs, 4) == {0: 0, 1: 2, 2: 3}  # class 3 absent


def _png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_plots_are_pngs() -> None:
    labels, probs = _random_case(4, n=40)
    m = M.compute_metrics(labels, probs, CLASSES)
    assert min(_png_size(plots.confusion_matrix_png(m.confusion, CLASSES))) > 100
    images = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 1), dtype=np.uint8)
    gallery = plots.misclassified_gallery_png(images, [0] * 5, [1] * 5, [0.9] * 5, CLASSES)
    assert min(_png_size(gallery)) > 100
    assert min(_png_size(plots.misclassified_gallery_png(images[:0], [], [], [], CLASSES))) > 10
    rgb = np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    assert min(_png_size(plots.saliency_png(rgb, np.random.rand(8, 8), "cat"))) > 100
    assert min(_png_size(plots.saliency_png(rgb, np.zeros((8, 8)), "flat"))) > 100
