"""The whole pipeline, end to end, on real local services: the definition SageMaker would run.

One module-scoped first run feeds several checks; later tests reuse its cache, so the module
costs about one full run plus a few cached ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import mlflow
import pytest

from pipelines.deploy.local import stop_local_endpoint
from pipelines.runner.record import RunRecord
from pipelines.runner.run import RunRequest, run
from pipelines.runner.state import Execution, list_ids
from pipelines.settings import Settings
from pipelines.storage import s3_client, split_s3_uri

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A small but real run: 1,500 MNIST digits, 2 DDP processes, a few epochs.
IMPORT_LIMIT = 1500
EPOCHS = 6
THRESHOLD = 0.80


def _request(**changes: Any) -> RunRequest:
    # 32 per process: enough optimiser steps per epoch on 1,200 training images.
    parameters = {
        "Epochs": EPOCHS,
        "ProcessesPerNode": 2,
        "AccuracyThreshold": THRESHOLD,
        "PerDeviceBatchSize": 32,
    }
    return RunRequest(parameters={**parameters, **changes}, import_limit=IMPORT_LIMIT)


@pytest.fixture(scope="module")
def first_run(stack_settings: Settings) -> Iterator[RunRecord]:
    lines: list[str] = []
    summary = run(stack_settings, _request(), out=lines.append)
    print("\n".join(lines))
    yield summary
    stop_local_endpoint(stack_settings, out=lambda _m: None)  # the session stack is shared


def _s3_exists(settings: Settings, uri: str) -> bool:
    bucket, key = split_s3_uri(uri)
    return s3_client(settings).list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) > 0


def test_run_produces_every_artifact(first_run: RunRecord, stack_settings: Settings) -> None:
    assert first_run.status == "Succeeded", first_run.failure
    assert first_run.gate_passed is True
    assert first_run.accuracy >= THRESHOLD
    execution = Execution.load(stack_settings.state_dir, first_run.execution_id)
    steps = execution.steps
    dataset_uri = steps["Prepare"].properties["ProcessingOutputConfig"]["Outputs"]
    dataset_uri = next(o["S3Output"]["S3Uri"] for o in dataset_uri if o["OutputName"] == "dataset")
    assert _s3_exists(stack_settings, dataset_uri.rstrip("/") + "/manifest.json")
    model_uri = steps["Train"].properties["ModelArtifacts"]["S3ModelArtifacts"]
    assert model_uri.endswith("model.tar.gz") and _s3_exists(stack_settings, model_uri)
    evaluation = steps["Evaluate"].property_files["EvaluationReport"]
    assert (
        evaluation["multiclass_classification_metrics"]["accuracy"]["value"] == first_run.accuracy
    )

    client = mlflow.MlflowClient(stack_settings.tracking_uri)
    version = client.get_model_version(
        stack_settings.registered_model_name, str(first_run.model_version)
    )
    assert version.tags["pipeline_execution"] == first_run.execution_id
    assert version.tags["data_manifest_sha256"]
    run_info = client.get_run(version.run_id)
    assert run_info.data.params  # the training config as params
    assert any(k.startswith("val") or k.startswith("train") for k in run_info.data.metrics)
    assert RunRecord.read(stack_settings.state_dir) == first_run  # the reader gets what was run
    summary_file = json.loads((stack_settings.state_dir / "last-run.json").read_text())
    for key in (
        "accuracy",
        "gate_passed",
        "model_version",
        "endpoint_url",
        "mlflow_url",
        "steps",
        "total_seconds",
    ):
        assert key in summary_file


def test_endpoint_classifies_held_out_images(first_run: RunRecord) -> None:
    assert first_run.endpoint_url, "the endpoint was not deployed"
    with urllib.request.urlopen(first_run.endpoint_url + "/ping", timeout=5) as resp:
        assert resp.status == 200
    samples = first_run.sample_predictions
    assert len(samples) == 8
    right = sum(s["true"] == s["predicted"] for s in samples)
    # The endpoint's accuracy on these images should be in line with evaluation.json.
    assert right >= 6, samples


def test_second_run_is_served_from_cache(first_run: RunRecord, stack_settings: Settings) -> None:
    summary = run(stack_settings, _request(), out=lambda _m: None)
    assert summary.status == "Succeeded", summary.failure
    for step in ("Prepare", "Train", "Evaluate"):
        assert summary.steps[step].status == "Cached", summary.steps
    assert summary.accuracy == first_run.accuracy
    assert summary.model_version == first_run.model_version  # Register is idempotent
    # Nothing ran locally, yet the endpoint still gets held-out images (read from S3).
    assert len(summary.sample_predictions) == 8


def test_gate_failure_stops_before_register(first_run: RunRecord, stack_settings: Settings) -> None:
    summary = run(stack_settings, _request(AccuracyThreshold=1.01), out=lambda _m: None)
    assert summary.status == "Failed"
    assert summary.gate_passed is False
    assert "1.0100" in " ".join(summary.gate_reasons)
    registers = [n for n in summary.steps if "Register" in n]
    assert registers and all(summary.steps[n].status == "Skipped" for n in registers)
    assert "accuracy" in (summary.failure or "").lower()


def _wait_for(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError("condition not reached")


def test_kill_during_training_then_resume(first_run: RunRecord, stack_settings: Settings) -> None:
    before = set(list_ids(stack_settings.state_dir))
    env = {
        **os.environ,
        "LEPTON_STATE_DIR": str(stack_settings.state_dir),
        "LEPTON_S3_PORT": str(stack_settings.s3_port),
        "LEPTON_MLFLOW_PORT": str(stack_settings.mlflow_port),
        "LEPTON_ENDPOINT_PORT": str(stack_settings.endpoint_port),
    }
    # --no-cache: Train must really run so that there is something to interrupt.
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "pipeline",
        "run",
        "--no-cache",
        "--epochs",
        str(EPOCHS),
        "--accuracy-threshold",
        str(THRESHOLD),
        "--param",
        "PerDeviceBatchSize=32",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    new_id: list[str] = []

    def training_started() -> bool:
        ids = set(list_ids(stack_settings.state_dir)) - before
        if not ids:
            return False
        new_id[:] = [sorted(ids)[-1]]
        ex = Execution.load(stack_settings.state_dir, new_id[0])
        # A checkpoint that reached S3: what a new attempt restores (SageMaker's semantics).
        listed = s3_client(stack_settings).list_objects_v2(
            Bucket=stack_settings.artifact_bucket, Prefix="pipeline/checkpoints/"
        )
        synced = [
            o["Key"]
            for o in listed.get("Contents", [])
            if f"Prepare-{new_id[0]}/" in o["Key"] and o["Key"].endswith(".ckpt")
        ]
        return ex.steps["Train"].status == "Executing" and bool(synced)

    try:
        _wait_for(training_started, 300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    interrupted = Execution.load(stack_settings.state_dir, new_id[0])
    prepare_started = interrupted.steps["Prepare"].started
    assert interrupted.steps["Prepare"].status == "Succeeded"
    assert interrupted.steps["Train"].status == "Executing"  # the runner died mid-step

    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "resume", new_id[0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Prepare: already succeeded (resume)" in out.stdout
    summary = json.loads(
        (interrupted.folder / "steps" / "Train" / "hosts" / "algo-1" / "output" / "data")
        .joinpath("training.json")
        .read_text()
    )
    assert summary["resumed_from"], "training restarted from scratch instead of the checkpoint"
    done = Execution.load(stack_settings.state_dir, new_id[0])
    assert done.status == "Succeeded"
    assert done.steps["Prepare"].started == prepare_started  # not redone
