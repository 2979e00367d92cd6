"""Pieces every step builder shares: the build context, caching, retries, processing I/O.

Every builder takes the `BuildContext` and the upstream steps it reads from; data flows only
through property references (`Steps.<Name>....`), so the dependencies are in the JSON itself.
SageMaker SDK v3 is imported lazily, inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.definition import names as n
from pipelines.definition.config import PipelineConfig


@dataclass(frozen=True)
class Images:
    processing: str
    training: str
    inference: str
    stock: bool  # SageMaker's PyTorch images: the project's requirements install at start


@dataclass(frozen=True)
class BuildContext:
    cfg: PipelineConfig
    params: dict[str, Any]  # config field -> SDK parameter object (parameters.sdk_parameters)
    session: Any  # a PipelineSession (offline or real)
    code_dir: Path  # staged code folder (see definition/bundle.py)
    role: str
    images: Images

    @property
    def code_version(self) -> str:
        return self.code_dir.parent.name  # the staged folder's content digest


def cache_config(ctx: BuildContext) -> Any:
    from sagemaker.mlops.workflow import CacheConfig

    return CacheConfig(enable_caching=True, expire_after=ctx.cfg.cache_expire)


def job_retry_policies(ctx: BuildContext) -> list[Any]:
    """Retry transient failures only: service faults, throttling, capacity, internal errors."""
    from sagemaker.mlops.workflow import (
        SageMakerJobExceptionTypeEnum as Job,
    )
    from sagemaker.mlops.workflow import (
        SageMakerJobStepRetryPolicy,
        StepRetryPolicy,
    )
    from sagemaker.mlops.workflow import (
        StepExceptionTypeEnum as StepErr,
    )

    if ctx.cfg.retries == 0:
        return []
    return [
        StepRetryPolicy(
            exception_types=[StepErr.SERVICE_FAULT, StepErr.THROTTLING],
            interval_seconds=30,
            backoff_rate=2.0,
            max_attempts=ctx.cfg.retries,
        ),
        SageMakerJobStepRetryPolicy(
            exception_types=[Job.RESOURCE_LIMIT],
            failure_reason_types=[Job.CAPACITY_ERROR, Job.INTERNAL_ERROR],
            interval_seconds=60,
            backoff_rate=2.0,
            max_attempts=ctx.cfg.retries,
        ),
    ]


def step_output_uri(ctx: BuildContext, step: str, output: str) -> Any:
    """`s3://bucket/prefix/executions/<execution id>/<step>/<output>` (resolved at run time)."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join

    return Join(
        on="/",
        values=[
            ctx.cfg.s3_root,
            "executions",
            ExecutionVariables.PIPELINE_EXECUTION_ID,
            step,
            output,
        ],
    )


def processing_input(name: str, source: Any, destination: str) -> Any:
    from sagemaker.core.shapes import ProcessingInput, ProcessingS3Input

    return ProcessingInput(
        input_name=name,
        s3_input=ProcessingS3Input(
            s3_uri=source, local_path=destination, s3_data_type="S3Prefix", s3_input_mode="File"
        ),
    )


def processing_output(name: str, source: str, destination: Any) -> Any:
    from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output

    return ProcessingOutput(
        output_name=name,
        s3_output=ProcessingS3Output(
            s3_uri=destination, local_path=source, s3_upload_mode="EndOfJob"
        ),
    )


def entrypoint(ctx: BuildContext, module: str) -> list[str]:
    """`python3 -m <module>`; on stock images the image requirements are installed first."""
    if not ctx.images.stock:
        return ["python3", "-m", module]
    script = (
        f"python3 -m pip install --quiet -r {n.CODE_DIR}/{n.IMAGE_REQUIREMENTS} "
        f'&& exec python3 -m {module} "$@"'
    )
    return ["bash", "-c", script, module]


def processor(
    ctx: BuildContext,
    module: str,
    instance_count: Any,
    base_job_name: str,
    instance_type: Any = None,
    tracking: bool = True,
) -> Any:
    """`python3 -m <module>` with the code bundle (the "code" input) on PYTHONPATH, on
    `instance_type` (default: the ProcessingInstanceType parameter); `tracking`: the job talks
    to MLflow, so it is given MLFLOW_TRACKING_URI (the local runner also waits for the server
    before such a step, and only then)."""
    from sagemaker.core.processing import Processor

    env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": n.CODE_DIR}
    if ctx.cfg.tracking_uri and tracking:
        env["MLFLOW_TRACKING_URI"] = ctx.cfg.tracking_uri
    return Processor(
        role=ctx.role,
        image_uri=ctx.images.processing,
        instance_count=instance_count,
        instance_type=instance_type or ctx.params["processing_instance_type"],
        entrypoint=entrypoint(ctx, module),
        volume_size_in_gb=ctx.cfg.volume_size_gb,
        base_job_name=base_job_name,
        sagemaker_session=ctx.session,
        env=env,
    )


def code_input(ctx: BuildContext) -> Any:
    return processing_input(n.CODE_INPUT, str(ctx.code_dir), n.CODE_DIR)  # the session stages it
