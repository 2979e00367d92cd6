"""`lepton batch predict` on AWS: the pipeline's Batch step as a SageMaker Processing job.

The request is the definition's own Batch step (pipelines/batch/job.py) on the project's image,
with the code bundle uploaded as `upsert` uploads it; the model is a model package's artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipelines.batch.job import BatchJobError, job_arguments, job_name
from pipelines.definition.config import PipelineConfig
from pipelines.settings import Settings

Printer = Callable[[str], None]
TERMINAL = ("Completed", "Failed", "Stopped")


def package_model(sm: Any, ref: str | None, group: str) -> tuple[str, str]:
    """(ModelDataUrl, package ARN) of `ref` (a model package ARN) or of the group's newest
    Approved package."""
    from pipelines.register.sagemaker import latest_approved

    arn = ref or latest_approved(sm, group)
    if not arn:
        raise BatchJobError(
            f"model package group {group} has no Approved package; pass --model ARN"
        )
    if not arn.startswith("arn:"):
        raise BatchJobError(f"on AWS --model is a model package ARN, got {arn!r}")
    package = sm.describe_model_package(ModelPackageName=arn)
    containers = package.get("InferenceSpecification", {}).get("Containers", [])
    url = next((c["ModelDataUrl"] for c in containers if c.get("ModelDataUrl")), None)
    if url is None:
        raise BatchJobError(f"{arn} has no ModelDataUrl")
    return str(url), arn


def start_job(
    cfg: PipelineConfig,
    settings: Settings,
    input_uri: str,
    output_uri: str,
    ref: str | None,
    options: Mapping[str, Any],
    *,
    sm: Any,
    s3: Any,
    out: Printer = print,
) -> str:
    """Upload the code bundle, create the processing job; returns its name."""
    from pipelines.definition.build import build_definition

    for uri in (input_uri, output_uri):
        if not uri.startswith("s3://"):
            raise BatchJobError(f"on AWS input and output are s3:// prefixes, got {uri!r}")
    if not cfg.role_arn:
        raise BatchJobError("no execution role: set LEPTON_SAGEMAKER_ROLE_ARN or --stack")
    model_url, arn = package_model(sm, ref, cfg.model_package_group)
    built = build_definition(cfg, staging_root=Path(settings.state_dir) / "code")
    built.bundle.upload(s3)
    name = job_name()
    args = job_arguments(
        built.parsed(),
        input_uri=input_uri,
        output_uri=output_uri,
        model_data_url=model_url,
        model_version=arn,
        job_id=name,
        options=options,
    )
    sm.create_processing_job(ProcessingJobName=name, **args)
    out(f"{name}: {arn} on {input_uri} -> {output_uri}")
    return name


def wait_job(sm: Any, name: str, out: Printer = print, poll_s: float = 30.0) -> dict[str, Any]:
    """Poll until the job ends; returns its description, raises BatchJobError unless Completed."""
    last = None
    while True:
        job = sm.describe_processing_job(ProcessingJobName=name)
        status = job["ProcessingJobStatus"]
        if status != last:
            out(f"{name}: {status}")
            last = status
        if status in TERMINAL:
            break
        time.sleep(poll_s)
    if status != "Completed":
        raise BatchJobError(f"{name} {status}: {job.get('FailureReason', 'no reason given')}")
    return dict(job)
