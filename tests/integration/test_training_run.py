"""Single-process training runs: dev run, reproducibility, resume, SIGTERM, MLflow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.fixtures_model import REPO_ROOT, train_subprocess_env
from training.checkpoints import list_checkpoints
from training.train import main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs read os.environ: keep other tests' SageMaker/MLflow settings out."""
    for key in list(os.environ):
        if key.startswith(("SM_", "MLFLOW_", "LEPTON_")) or key in ("RANK", "WORLD_SIZE"):
            monkeypatch.delenv(key)


def _args(dataset: Path, root: Path, *extra: str) -> list[str]:
    return [
        "--dataset",
        str(dataset),
        "--model-dir",
        str(root / "model"),
        "--output-data-dir",
        str(root / "out"),
        "--checkpoint-dir",
        str(root / "ckpt"),
        *extra,
    ]


def _report(root: Path) -> dict:
    return json.loads((root / "out" / "training.json").read_text())


def _mlflow_env(monkeypatch: pytest.MonkeyPatch, store: Path) -> str:
    uri = store.as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 gates file stores
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lepton-tests")
    monkeypatch.setenv("LEPTON_CODE_VERSION", "test-sha")
    return uri


def test_fast_dev_run(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    assert main(_args(tiny_dataset_dir, tmp_path, "--setup", "dev_run", "--no-tracking")) == 0
    report = _report(tmp_path)
    assert report["global_step"] == 2 and report["world_size"] == 1
    assert {p.name for p in (tmp_path / "model").iterdir()} == {
        "model.onnx",
        "model.pt",
        "metadata.json",
        "code",  # the serving code that fits the model (model.tar.gz code/)
    }
    code = tmp_path / "model" / "code"
    assert (code / "inference" / "server.py").is_file() and (code / "inference.py").is_file()


def test_seeded_run_is_reproducible(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    args = ("--setup", "tiny", "--epochs", "2", "--no-tracking")
    assert main(_args(tiny_dataset_dir, tmp_path / "a", *args)) == 0
    assert main(_args(tiny_dataset_dir, tmp_path / "b", *args)) == 0
    a, b = _report(tmp_path / "a"), _report(tmp_path / "b")
    assert a["metrics"] == b["metrics"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["metrics"]["test_accuracy"] > 0.8


def test_corrupt_newest_checkpoint_falls_back(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    args = ("--setup", "tiny", "--no-tracking")
    assert main(_args(tiny_dataset_dir, tmp_path, *args)) == 0
    first = _report(tmp_path)
    newest, previous = list_checkpoints(tmp_path / "ckpt")[:2]
    newest.write_bytes(b"not a checkpoint" * 100)  # e.g. a partial S3 sync
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert main(_args(tiny_dataset_dir, tmp_path, *args)) == 0
    second = _report(tmp_path)
    assert second["resumed_from"] == str(previous)
    # the re-run of the last epoch reproduces the uninterrupted result
    for key in ("test_accuracy", "test_loss", "val_accuracy"):
        assert second["metrics"][key] == pytest.approx(first["metrics"][key], abs=1e-5)


def test_mlflow_run_holds_params_metrics_tags_and_model(
    tiny_dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    uri = _mlflow_env(monkeypatch, tmp_path / "mlruns")
    assert main(_args(tiny_dataset_dir, tmp_path, "--setup", "tiny", "--epochs", "2")) == 0
    report = _report(tmp_path)
    run_id = report["mlflow_run_id"]
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["mlflow_run_id"] == run_id
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["per_device_batch_size"] == "64"
    assert run.data.params["global_batch_size"] == "64"
    assert {"arch", "lr_peak", "seed", "schedule"} <= set(run.data.params)
    assert run.data.tags["data_manifest_sha256"] == report["data_manifest_sha256"]
    assert run.data.tags["code_version"] == "test-sha"
    history = client.get_metric_history(run_id, "val_acc")
    assert sorted({m.step for m in history}) == [0, 1]
    assert run.data.metrics["final_test_accuracy"] == pytest.approx(
        report["metrics"]["test_accuracy"]
    )
    assert "confusion_matrix_test.png" in [a.path for a in client.list_artifacts(run_id)]
    mlflow.set_tracking_uri(uri)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert [m.source_run_id for m in models] == [run_id]
    loaded = mlflow.pyfunc.load_model(models[0].model_uri)
    assert loaded.metadata.signature is not None
    local = Path(mlflow.artifacts.download_artifacts(models[0].model_uri, dst_path=str(tmp_path)))
    pins = (local / "requirements.txt").read_text().split()
    for dist in ("onnxruntime", "onnx", "numpy"):  # named, pinned to what trained it
        assert f"{dist}=={version(dist)}" in pins, pins
    assert (tmp_path / "ckpt" / "mlflow_run_id").read_text().strip() == run_id


def test_unreachable_tracking_server_fails_at_start(
    tiny_dataset_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: refused
    started = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        main(_args(tiny_dataset_dir, tmp_path, "--setup", "tiny"))
    assert exc.value.code == 2 and time.monotonic() - started < 20
    assert "unreachable" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_failed_run_ends_failed(
    tiny_dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    uri = _mlflow_env(monkeypatch, tmp_path / "mlruns")
    with pytest.raises(FileNotFoundError):
        main(
            _args(
                tiny_dataset_dir,
                tmp_path,
                "--setup",
                "tiny",
                "--pretrained-weights",
                str(tmp_path / "missing.safetensors"),
            )
        )
    run_id = (tmp_path / "ckpt" / "mlflow_run_id").read_text().strip()
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"


def _train_subprocess(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "training.train", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_sigterm_checkpoints_then_resume_matches(
    tiny_dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    env = train_subprocess_env(MLFLOW_TRACKING_URI=store.as_uri(), MLFLOW_ALLOW_FILE_STORE="true")
    common = ["--setup", "tiny", "--epochs", "5", "--per-device-batch-size", "16"]
    killed = tmp_path / "killed"
    proc = _train_subprocess(_args(tiny_dataset_dir, killed, *common), env)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # wait until the second epoch is under way, then stop the job
        lines.append(line)
        if line.startswith("epoch 1/"):
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    assert "SIGTERM: saved checkpoint" in out
    steps_per_epoch = -(-1437 // 16)
    sigterm_ckpt = list_checkpoints(killed / "ckpt")[0]
    assert int(sigterm_ckpt.stem.split("-")[1]) % steps_per_epoch != 0, "not mid-epoch"
    run_id = (killed / "ckpt" / "mlflow_run_id").read_text().strip()
    client = MlflowClient(store.as_uri())
    assert client.get_run(run_id).info.status == "KILLED"
    assert not (killed / "out" / "training.json").exists()

    resumed = _train_subprocess(_args(tiny_dataset_dir, killed, *common), env)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    report = _report(killed)
    assert report["resumed_from"] == str(sigterm_ckpt)
    assert report["mlflow_run_id"] == run_id  # the same MLflow run continues
    assert client.get_run(run_id).info.status == "FINISHED"

    plain = tmp_path / "plain"
    baseline = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            *_args(tiny_dataset_dir, plain, *common),
            "--no-tracking",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    expected = _report(plain)["metrics"]
    for key in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
        assert report["metrics"][key] == pytest.approx(expected[key], abs=1e-3), key
    shutil.rmtree(store, ignore_errors=True)


def test_sagemaker_style_environment(
    tiny_dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No flags: channels, model/output dirs and hyperparameters come from SM_* variables."""
    monkeypatch.setenv("SM_CHANNEL_DATASET", str(tiny_dataset_dir))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", str(tmp_path / "out"))
    monkeypatch.setenv(
        "SM_HPS", json.dumps({"setup": "dev_run", "seed": 7, "per_device_batch_size": 32})
    )
    monkeypatch.setenv("LEPTON_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("LEPTON_CODE_VERSION", "sm-test")
    # SageMaker also passes the hyperparameters as flags (underscored names)
    assert main(["--per_device_batch_size", "32", "--no-tracking"]) == 0
    report = _report(tmp_path)
    assert report["config"]["seed"] == 7 and report["config"]["per_device_batch_size"] == 32
    assert report["config"]["limit_train_batches"] == 2  # from the dev_run setup
    assert report["code_version"] == "sm-test"
    assert list_checkpoints(tmp_path / "ckpt")


def test_frozen_backbone_warmup_then_fine_tuning(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from training.checkpoints import load_checkpoint_file
    from training.model import build_model

    torch.manual_seed(123)
    source = build_model(
        "small_cnn", channels=1, num_classes=1000, image_size=[8, 8], mean=[0.5], std=[0.2], width=8
    )  # stands in for "pretrained"
    weights = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}
    save_file(weights, str(tmp_path / "pretrained.safetensors"))
    assert (
        main(
            _args(
                tiny_dataset_dir,
                tmp_path,
                "--setup",
                "tiny",
                "--epochs",
                "2",
                "--freeze-backbone-epochs",
                "1",
                "--no-tracking",
                "--pretrained-weights",
                str(tmp_path / "pretrained.safetensors"),
            )
        )
        == 0
    )
    after_1, after_2 = (
        load_checkpoint_file(p)["state_dict"] for p in reversed(list_checkpoints(tmp_path / "ckpt"))
    )
    key = "model.backbone.features.0.weight"
    assert torch.equal(after_1[key], weights["features.0.weight"])  # frozen in epoch 1
    assert not torch.equal(after_2[key], weights["features.0.weight"])  # fine-tuned in epoch 2
    assert torch.equal(
        after_1["model.backbone.features.1.running_mean"], weights["features.1.running_mean"]
    )  # BN statistics kept while frozen
    assert after_1["model.backbone.fc.weight"].shape == (10, 32)  # new head for 10 classes


@pytest.mark.slow
def test_tracks_to_the_local_mlflow_server(
    tiny_dataset_dir: Path, tmp_path: Path, stack_settings: object
) -> None:
    """Against the project's real local stack: MLflow server, artifacts in SeaweedFS."""
    from mlflow import MlflowClient

    settings = stack_settings
    env = train_subprocess_env(
        MLFLOW_TRACKING_URI=settings.tracking_uri,  # type: ignore[attr-defined]
        MLFLOW_EXPERIMENT_NAME="lepton-train-tests",
        **settings.s3_env(),
    )  # type: ignore[attr-defined]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            *_args(tiny_dataset_dir, tmp_path, "--setup", "tiny", "--epochs", "2"),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_id = _report(tmp_path)["mlflow_run_id"]
    client = MlflowClient(settings.tracking_uri)  # type: ignore[attr-defined]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "val_acc" in run.data.metrics
    assert run.data.tags["data_manifest_sha256"] == _report(tmp_path)["data_manifest_sha256"]
