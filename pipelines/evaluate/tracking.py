"""The Evaluate step's MLflow logging: metrics and report files into the model's training run."""

from __future__ import annotations

import time
from pathlib import Path

from pipelines.evaluate.core import EvaluationResult, Printer, say

MLFLOW_ARTIFACT_PATH = "evaluation"
MLFLOW_METRIC_PREFIX = "test_"


def log_to_mlflow(
    result: EvaluationResult,
    output: Path,
    tracking_uri: str,
    experiment: str,
    out: Printer = say,
) -> str:
    """Log metrics and files into the training run (or a new run); returns the run id."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from training.tracking import mlflow_client

    client = mlflow_client(tracking_uri)
    run_id = result.mlflow_run_id
    created = False
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException:
            out(f"training run {run_id} not found on {tracking_uri}; logging to a new run")
            run_id = None
    if not run_id:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(
            experiment_id, run_name="evaluate", tags={"lepton.step": "evaluate"}
        )
        run_id, created = run.info.run_id, True
    now_ms = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(MLFLOW_METRIC_PREFIX + k, float(v), now_ms, 0) for k, v in result.metrics.items()
        ],
    )
    client.log_artifacts(run_id, str(output), artifact_path=MLFLOW_ARTIFACT_PATH)
    if created:
        client.set_terminated(run_id)
    out(f"logged to MLflow run {run_id} ({tracking_uri})")
    return run_id
