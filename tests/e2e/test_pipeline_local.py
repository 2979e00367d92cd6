"""The whole pipeline, end to end, on real local services: the definition SageMaker would run.

One module-scoped first run feeds several checks; later tests reuse its cache, so the module
costs about one full run plus a few cached ones.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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


def test_batch_step_classifies_a_prefix_after_register(
    first_run: RunRecord, stack_settings: Settings
) -> None:
    # Off by default: the first run skipped it and reported nothing.
    assert first_run.steps["Batch"].status == "Skipped" and first_run.batch is None
    raw = first_run.parameters["InputDataUri"]
    summary = run(stack_settings, _request(BatchInputUri=raw), out=lambda _m: None)
    assert summary.status == "Succeeded", summary.failure
    for step in ("Prepare", "Train", "Evaluate"):  # BatchInputUri is the Batch step's alone
        assert summary.steps[step].status == "Cached", summary.steps
    assert summary.steps["Batch"].status == "Succeeded", summary.steps
    report = summary.batch
    assert report is not None and report["failed"] == 0, report
    assert report["predicted"] == report["total"] == IMPORT_LIMIT
    assert report["output"].endswith(f"/executions/{summary.execution_id}/Batch/predictions")
    # The raw data is an ImageFolder: each result's key names its true class.
    bucket, prefix = split_s3_uri(report["output"] + "/")
    s3 = s3_client(stack_settings)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=200)["Contents"]
    records = [
        json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
        for o in listed
        if o["Key"].endswith(".out")
    ]
    assert records and all(r["model"].endswith(f"/{summary.model_version}") for r in records)
    right = sum(r["label"] == r["key"].split("/")[0] for r in records)
    assert right / len(records) >= THRESHOLD - 0.05, (right, len(records))


def _send_png(url: str, images: Any) -> None:
    from PIL import Image

    for pixels in images:
        buf = io.BytesIO()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, "PNG")
        request = urllib.request.Request(
            url + "/invocations", data=buf.getvalue(), headers={"Content-Type": "image/png"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200


def test_captured_traffic_is_checked_for_drift(
    first_run: RunRecord, stack_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import numpy as np

    from inference.capture import VARIANT
    from pipelines.cli import main
    from pipelines.deploy.local import deploy_local
    from pipelines.monitor.source import read_window
    from pipelines.runner.samples import held_out_images

    endpoint = f"drift-{uuid.uuid4().hex[:6]}"
    settings = stack_settings.with_overrides(capture_percent=100.0, endpoint_name=endpoint)
    for key, value in {
        "LEPTON_STATE_DIR": str(settings.state_dir),
        "LEPTON_S3_PORT": str(settings.s3_port),
        "LEPTON_MLFLOW_PORT": str(settings.mlflow_port),
        "LEPTON_ENDPOINT_PORT": str(settings.endpoint_port),
        "LEPTON_ENDPOINT_NAME": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    ref = f"models:/{first_run.model_name}/{first_run.model_version}"
    assert deploy_local(settings, ref, out=lambda _m: None)  # blue/green, now capturing
    execution = Execution.load(stack_settings.state_dir, first_run.execution_id)
    _, images, _ = held_out_images(settings, execution)
    rng = np.random.default_rng(0)
    cases = {
        "held_out": (images, set()),
        "inverted": (255 - images, {"brightness"}),
        "rotated": (np.rot90(images, k=1, axes=(1, 2)).copy(), {"top1_confidence"}),
        "noisy": (
            np.clip(images + rng.normal(0, 60, images.shape), 0, 255).astype(np.uint8),
            {"sharpness"},
        ),
    }
    s3 = s3_client(settings)

    def monitor(case: str, start: datetime, end: datetime) -> dict[str, Any]:
        out = tmp_path / case
        argv = ["monitor", "run", "--until", end.isoformat(), "--out", str(out)]
        assert main([*argv, "--since", f"{(end - start).total_seconds():.0f}s"]) == 0
        return json.loads((out / "monitoring_summary.json").read_text())

    first = datetime.now(UTC).replace(microsecond=0)
    nothing = monitor("empty", first - timedelta(hours=2), first - timedelta(hours=1))
    assert nothing["status"] == "not_enough_data" and nothing["images"] == 0
    for case, (batch, drifting) in cases.items():
        time.sleep(1.1)  # capture times have whole seconds: windows must not share one
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        time.sleep((start - datetime.now(UTC)).total_seconds())
        _send_png(settings.endpoint_url, batch)
        end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        deadline = time.monotonic() + 30  # the capture writer flushes every few seconds
        while time.monotonic() < deadline:
            got = sum(
                1 for _ in read_window(settings.capture_uri, endpoint, VARIANT, start, end, s3)
            )
            if got >= len(batch):
                break
            time.sleep(0.5)
        assert got == len(batch), (case, got)
        time.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()))
        summary = monitor(case, start, end)
        psi = {c["name"]: round(c["psi"], 2) for c in summary["checks"]}
        print(case, summary["status"], psi)
        assert summary["images"] == len(batch), summary
        named = {c["name"] for c in summary["checks"] if c["violation"]}
        if drifting:
            assert summary["status"] == "violations" and drifting <= named, (case, psi)
        else:
            assert summary["status"] == "no_violations", (case, psi)


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


def _checkpoint_in_s3(settings: Settings, execution_id: str) -> bool:
    """A checkpoint of this execution's Train reached S3: what a new attempt restores."""
    listed = s3_client(settings).list_objects_v2(
        Bucket=settings.artifact_bucket, Prefix="pipeline/checkpoints/"
    )
    return any(
        f"Prepare-{execution_id}/" in o["Key"] and o["Key"].endswith(".ckpt")
        for o in listed.get("Contents", [])
    )


def _start_run(stack_settings: Settings, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`lepton pipeline run --no-cache` in the background; returns it once Train has a
    checkpoint in S3, with the execution id."""
    before = set(list_ids(stack_settings.state_dir))
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

    def training_checkpointed() -> bool:
        ids = set(list_ids(stack_settings.state_dir)) - before
        if not ids:
            return False
        new_id[:] = [sorted(ids)[-1]]
        ex = Execution.load(stack_settings.state_dir, new_id[0])
        return ex.steps["Train"].status == "Executing" and _checkpoint_in_s3(
            stack_settings, new_id[0]
        )

    try:
        _wait_for(training_checkpointed, 300)
    except BaseException:
        proc.kill()
        raise
    return proc, new_id[0]


def _env(stack_settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "LEPTON_STATE_DIR": str(stack_settings.state_dir),
        "LEPTON_S3_PORT": str(stack_settings.s3_port),
        "LEPTON_MLFLOW_PORT": str(stack_settings.mlflow_port),
        "LEPTON_ENDPOINT_PORT": str(stack_settings.endpoint_port),
    }


def _resume(env: dict[str, str], execution_id: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "resume", execution_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _training_report(execution: Execution) -> dict[str, Any]:
    host = execution.folder / "steps" / "Train" / "hosts" / "algo-1"  # plays its /opt/ml
    return json.loads((host / "output" / "data" / "training.json").read_text())


def test_sigterm_to_the_training_job_then_resume_from_s3(
    first_run: RunRecord, stack_settings: Settings
) -> None:
    """A spot interruption: the job's main process gets SIGTERM, the ranks save a checkpoint
    and stop, Train fails; the next attempt starts on fresh hosts and resumes from S3."""
    import psutil

    env = _env(stack_settings)
    proc, execution_id = _start_run(stack_settings, env)
    folder = Execution.load(stack_settings.state_dir, execution_id).folder
    launchers = [
        p
        for p in psutil.process_iter(["cmdline", "cwd"])
        if "training/train.py" in (p.info["cmdline"] or [])
        and str(p.info["cwd"] or "").startswith(str(folder))
    ]
    assert len(launchers) == 1, launchers
    launchers[0].send_signal(signal.SIGTERM)  # what SageMaker sends the container
    assert proc.wait(timeout=300) == 1
    interrupted = Execution.load(stack_settings.state_dir, execution_id)
    assert interrupted.steps["Train"].status == "Failed"
    out = _resume(env, execution_id)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "restored" in out.stdout and "checkpoint file(s) from s3://" in out.stdout
    done = Execution.load(stack_settings.state_dir, execution_id)
    assert done.status == "Succeeded"
    assert _training_report(done)["resumed_from"], "the next attempt did not resume"


def test_kill_during_training_then_resume(first_run: RunRecord, stack_settings: Settings) -> None:
    env = _env(stack_settings)
    proc, execution_id = _start_run(stack_settings, env)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = Execution.load(stack_settings.state_dir, execution_id)
    prepare_started = interrupted.steps["Prepare"].started
    assert interrupted.steps["Prepare"].status == "Succeeded"
    assert interrupted.steps["Train"].status == "Executing"  # the runner died mid-step

    out = _resume(env, execution_id)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Prepare: already succeeded (resume)" in out.stdout
    summary = _training_report(interrupted)
    assert summary["resumed_from"], "training restarted from scratch instead of the checkpoint"
    done = Execution.load(stack_settings.state_dir, execution_id)
    assert done.status == "Succeeded"
    assert done.steps["Prepare"].started == prepare_started  # not redone
