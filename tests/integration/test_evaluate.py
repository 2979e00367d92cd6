"""The evaluate step on a really trained model: files, contract layout, recomputed accuracy,
MLflow logging against the real local stack, and refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.predictor import Predictor
from pipelines.evaluate import step as evaluate
from pipelines.settings import Settings
from training.shards import load_split

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMES = ("evaluation.json", "confusion_matrix.json", "confusion_matrix.png", "misclassified.png")


@pytest.fixture(scope="module")
def processing_model_dir(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a Processing job sees: a folder holding the training job's model.tar.gz."""
    folder = tmp_path_factory.mktemp("processing-model")
    with tarfile.open(folder / "model.tar.gz", "w:gz") as tar:
        for name in ("model.onnx", "model.pt", "metadata.json"):
            tar.add(trained_model_dir / name, arcname=name)
    return folder


@pytest.fixture(scope="module")
def evaluated(
    processing_model_dir: Path, tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("evaluation")
    code = evaluate.main(
        [
            "--model",
            str(processing_model_dir),
            "--dataset",
            str(tiny_dataset_dir),
            "--output",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_writes_every_file(evaluated: Path) -> None:
    for name in NAMES:
        assert (evaluated / name).is_file(), name
    saliency = sorted(p.name for p in evaluated.glob("saliency_*.png"))
    assert saliency == [f"saliency_{c}.png" for c in "0123456789"]
    for png in [*evaluated.glob("*.png")]:
        assert Image.open(png).format == "PNG"


def test_accuracy_equals_recomputation(
    evaluated: Path, trained_model_dir: Path, tiny_dataset_dir: Path
) -> None:
    doc = json.loads((evaluated / "evaluation.json").read_text())
    images, labels = load_split(tiny_dataset_dir, "test")
    probs = Predictor.load(trained_model_dir).predict_arrays(images)
    predictions = probs.argmax(axis=1)
    expected = float((predictions == labels).mean())
    mcm = doc["multiclass_classification_metrics"]
    assert mcm["accuracy"]["value"] == pytest.approx(expected, abs=1e-9)
    assert mcm["accuracy"]["value"] > 0.5  # a trained model, not chance (0.1)
    for key in ("weighted_f1", "macro_f1", "expected_calibration_error"):
        assert 0.0 <= mcm[key]["value"] <= 1.0 and mcm[key]["standard_deviation"] == "NaN"
    cm = mcm["confusion_matrix"]
    assert sum(cm[c][c] for c in cm) == int((predictions == labels).sum())
    assert json.loads((evaluated / "confusion_matrix.json").read_text()) == cm
    assert doc["dataset"]["count"] == len(labels) and doc["dataset"]["split"] == "test"
    assert doc["model"]["classes"] == [str(i) for i in range(10)]
    support = {c: v["support"] for c, v in doc["per_class"].items()}
    assert sum(support.values()) == len(labels)
    # What the gate reads through the PropertyFile (names.ACCURACY_JSON_PATH):
    value = doc
    for part in ["multiclass_classification_metrics", "accuracy", "value"]:
        value = value[part]
    assert isinstance(value, float)


def test_refuses_bad_inputs(
    trained_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    args = ["--output", str(tmp_path / "out")]
    assert (
        evaluate.main(
            ["--model", str(trained_model_dir), "--dataset", str(tmp_path / "empty"), *args]
        )
        == 2
    )
    assert "manifest.json" in capsys.readouterr().err
    assert (
        evaluate.main(
            ["--model", str(tmp_path / "empty"), "--dataset", str(tmp_path / "empty"), *args]
        )
        == 2
    )
    assert "metadata.json" in capsys.readouterr().err
    assert not (tmp_path / "out" / "evaluation.json").exists()


def test_refuses_a_dataset_with_other_classes(
    trained_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.shards import write_dataset

    rng = np.random.default_rng(0)
    split = (rng.integers(0, 255, (4, 8, 8, 1), dtype=np.uint8), np.array([0, 1, 0, 1]))
    write_dataset(tmp_path / "ds", {"train": split, "test": split}, ["a", "b"], dataset="other")
    assert (
        evaluate.main(
            [
                "--model",
                str(trained_model_dir),
                "--dataset",
                str(tmp_path / "ds"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "classes" in capsys.readouterr().err


def _client(settings: Settings):  # noqa: ANN202
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri)


def test_logs_into_the_training_run(
    stack_settings: Settings,
    trained_model_dir: Path,
    tiny_dataset_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = _client(stack_settings)
    experiment = client.create_experiment("evaluate-it-training-run")
    run_id = client.create_run(experiment).info.run_id
    model = tmp_path / "model"
    model.mkdir()
    for name in ("model.onnx", "model.pt"):
        (model / name).symlink_to(trained_model_dir / name)
    meta = json.loads((trained_model_dir / "metadata.json").read_text())
    (model / "metadata.json").write_text(json.dumps({**meta, "mlflow_run_id": run_id}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack_settings.tracking_uri)
    assert (
        evaluate.main(
            [
                "--model",
                str(model),
                "--dataset",
                str(tiny_dataset_dir),
                "--output",
                str(tmp_path / "out"),
                "--max-saliency-classes",
                "2",
            ]
        )
        == 0
    )
    run = client.get_run(run_id)
    doc = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    accuracy = doc["multiclass_classification_metrics"]["accuracy"]["value"]
    assert run.data.metrics["test_accuracy"] == pytest.approx(accuracy)
    assert {"test_macro_f1", "test_weighted_f1", "test_expected_calibration_error"} <= set(
        run.data.metrics
    )
    logged = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert {f"evaluation/{n}" for n in NAMES} | {"evaluation/saliency_0.png"} <= logged
    local = client.download_artifacts(run_id, "evaluation/evaluation.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == doc


def test_script_logs_to_a_new_run_without_training_run(
    stack_settings: Settings, processing_model_dir: Path, tiny_dataset_dir: Path, tmp_path: Path
) -> None:
    """Run as SageMaker would: a plain script, MLflow configured only by the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LEPTON_"))}
    env.update(
        MLFLOW_TRACKING_URI=stack_settings.tracking_uri,
        MLFLOW_EXPERIMENT_NAME="evaluate-it-new-run",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "pipelines/evaluate/step.py"),
            "--model",
            str(processing_model_dir),
            "--dataset",
            str(tiny_dataset_dir),
            "--output",
            str(tmp_path / "out"),
            "--max-saliency-classes",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "evaluate: accuracy" in proc.stdout and "logged to MLflow run" in proc.stdout
    client = _client(stack_settings)
    experiment = client.get_experiment_by_name("evaluate-it-new-run")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert "evaluation/evaluation.json" in {
        f.path for f in client.list_artifacts(run.info.run_id, "evaluation")
    }
