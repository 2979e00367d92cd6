"""The Model Monitor schedule: its request is valid for CreateMonitoringSchedule (botocore's
own model: moto has no monitoring schedules), and its container entry point, run as Model
Monitor would run it (its environment, no code but the bundle it fetches from S3), writes the
report with violations for drifted traffic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from inference.capture import encode_event, hour_prefix
from pipelines.aws.monitor import BOOTSTRAP, schedule_request
from pipelines.monitor.prediction_stats import build_baseline
from pipelines.settings import Settings

CLASSES = ["dark", "light"]


def _png(pixels: np.ndarray) -> bytes:
    from pipelines.prepare.importers import png_bytes

    return png_bytes(pixels)


def test_schedule_request_is_valid_for_the_api() -> None:
    import botocore.session
    from botocore.validate import ParamValidator

    request = schedule_request(
        name="lepton-classifier-drift",
        endpoint="lepton-classifier",
        image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/lepton:cpu-abc",
        role_arn="arn:aws:iam::123456789012:role/exec",
        code_uri="s3://artifacts/pipeline/code/0123abcd",
        baseline_uri="s3://artifacts/pipeline/executions/x/Evaluate/evaluation/baseline.json",
        output_uri="s3://artifacts/monitoring/lepton-classifier",
        thresholds={"psi_threshold": 0.2},
    )
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateMonitoringSchedule").input_shape
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    spec = request["MonitoringScheduleConfig"]["MonitoringJobDefinition"]
    assert spec["MonitoringAppSpecification"]["ContainerEntrypoint"][-1] == "--psi_threshold=0.2"


@pytest.mark.slow
def test_entry_point_fetches_the_bundle_and_reports_drift(
    stack_settings: Settings, tmp_path: Path
) -> None:
    from pipelines.definition.build import build_definition
    from pipelines.definition.bundle import code_bundle_uri
    from pipelines.runner.run import local_config
    from pipelines.storage import s3_client

    built = build_definition(local_config(stack_settings), staging_root=tmp_path / "staging")
    built.bundle.upload(s3_client(stack_settings))
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, (200, 8, 8, 1), dtype=np.uint8)
    probs = np.tile([0.9, 0.1], (200, 1))
    baseline = build_baseline(dark, probs, CLASSES, (8, 8), 1, {"split": "test"})
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    now = datetime.now(UTC)
    folder = Path(hour_prefix(str(tmp_path / "input"), "ep", "AllTraffic", now))
    folder.mkdir(parents=True)
    answer = json.dumps({"predictions": [{"label": "light", "score": 0.8}]}).encode()
    lines = [
        json.dumps(
            encode_event(_png(255 - img[..., 0]), "image/png", answer, "application/json", now)
        )
        for img in dark[:150]
    ]
    (folder / "00-00-000-a.jsonl").write_text("\n".join(lines) + "\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHONPATH"))},
        **stack_settings.s3_env(),
        "AWS_DEFAULT_REGION": stack_settings.region,
        "LEPTON_CODE_URI": code_bundle_uri(built.parsed()),
        "LEPTON_CODE_DIR": str(tmp_path / "code"),
        # what Model Monitor sets
        "dataset_source": str(tmp_path / "input"),
        "baseline_statistics": str(tmp_path / "baseline.json"),
        "output_path": str(tmp_path / "out"),
        "start_time": f"{now.replace(minute=0, second=0, microsecond=0):%Y-%m-%dT%H:%M:%SZ}",
        "end_time": "2999-01-01T00:00:00Z",
    }
    proc = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, "--min_samples=100"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "code" / "pipelines" / "monitor" / "step.py").is_file()
    violations = json.loads((tmp_path / "out" / "constraint_violations.json").read_text())
    named = {v["feature_name"] for v in violations["violations"]}
    assert {"brightness", "predicted_class"} <= named, proc.stdout
    summary = json.loads((tmp_path / "out" / "monitoring_summary.json").read_text())
    assert summary["status"] == "violations" and summary["images"] == 150
