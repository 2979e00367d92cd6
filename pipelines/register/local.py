"""The RegisterModel step, locally: MLflow is the model registry.

The model package's ModelDataUrl (the training step's model.tar.gz) becomes a new version of
the registered model, tagged with the execution, data manifest and code version. With
ModelApprovalStatus=Approved it becomes `champion` at once; otherwise it waits as
`challenger` for `lepton model approve`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.runner.expressions import Context
from pipelines.runner.state import Execution
from pipelines.settings import Settings
from pipelines.storage import split_s3_uri


def _model_data_url(args: dict[str, Any]) -> str:
    containers = args.get("InferenceSpecification", {}).get("Containers", [])
    for container in containers:
        if container.get("ModelDataUrl"):
            return str(container["ModelDataUrl"])
    raise ValueError("RegisterModel step has no ModelDataUrl in InferenceSpecification")


def _baseline_uri(args: dict[str, Any]) -> str:
    """The package's data-quality statistics (Evaluate's baseline.json), or ""."""
    quality = args.get("ModelMetrics", {}).get("ModelDataQuality", {})
    return str(quality.get("Statistics", {}).get("S3Uri", ""))


def _training_summary(ctx: Context, model_url: str) -> dict[str, Any]:
    for props in ctx.step_properties.values():
        if props.get("ModelArtifacts", {}).get("S3ModelArtifacts") == model_url:
            return dict(props.get("Lepton", {}).get("training", {}))
    return {}


def _accuracy(ctx: Context) -> float | None:
    from pipelines.evaluate.report import accuracy_of

    found = (accuracy_of(doc) for files in ctx.property_files.values() for doc in files.values())
    return next((a for a in found if a is not None), None)


def register_step(
    settings: Settings,
    args: dict[str, Any],
    ctx: Context,
    execution: Execution,
    s3: Any,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    from pipelines.register import registry

    # The registered model is the step's model package group (a pipeline parameter).
    group = str(args.get("ModelPackageGroupName") or settings.registered_model_name)
    settings = settings.with_overrides(registered_model_name=group)
    model_url = _model_data_url(args)
    summary = _training_summary(ctx, model_url)
    accuracy = _accuracy(ctx)
    status = str(args.get("ModelApprovalStatus", "PendingManualApproval"))
    tags = {
        "pipeline_execution": execution.id,
        "model_data_url": model_url,
        "data_manifest_sha256": str(summary.get("data_manifest_sha256", "")),
        "code_version": str(summary.get("code_version", "")),
        "model_package_group": group,
        "baseline_uri": _baseline_uri(args),  # what `lepton monitor run` compares traffic with
    }
    # Idempotent: a cached re-run hands the same model.tar.gz to Register again; it keeps its
    # version (and approval) instead of piling up copies.
    existing = next(
        (v for v in registry.list_versions(settings) if v.tags.get("model_data_url") == model_url),
        None,
    )
    if existing is not None:
        echo(f"{model_url} is already version {existing.version} ({existing.approval_status})")
        return _properties(args, group, existing.version, existing.approval_status)
    with tempfile.TemporaryDirectory() as tmp:
        tar_path = Path(tmp) / "model.tar.gz"
        bucket, key = split_s3_uri(model_url)
        s3.download_file(bucket, key, str(tar_path))
        ref = registry.register_model(
            settings,
            tar_path,
            summary.get("mlflow_run_id"),
            tags,
            accuracy if accuracy is not None else float("nan"),
        )
    echo(f"registered {ref.name} version {ref.version} (alias challenger, {status})")
    if status == "Approved":
        registry.approve(settings, ref.version)
        echo(f"approved {ref.name} version {ref.version}: it is now champion")
    return _properties(args, ref.name, ref.version, status)


def _properties(args: dict[str, Any], name: str, version: str, status: str) -> dict[str, Any]:
    """DescribeModelPackage-like properties; the ARN is the MLflow model URI locally."""
    return {
        **args,
        "ModelPackageArn": f"models:/{name}/{version}",
        "ModelPackageName": f"{name}/{version}",
        "ModelPackageVersion": int(version),
        "ModelApprovalStatus": status,
    }
