"""Builders of the processing steps: Prepare, Evaluate and Deploy (`python3 -m <stage>.step`)."""

from __future__ import annotations

from typing import Any

from pipelines.definition import names as n
from pipelines.definition.common import (
    BuildContext,
    cache_config,
    code_input,
    job_retry_policies,
    processing_input,
    processing_output,
    processor,
    step_output_uri,
)
from pipelines.definition.config import PipelineConfig


def prepare_arguments(cfg: PipelineConfig) -> list[str]:
    """Prepare's container arguments: the serialized `PrepareConfig` (training.serialize);
    the data snapshot and the exchange prefix are added by the builder as references."""
    from pipelines.prepare.config import PrepareConfig
    from training.serialize import to_args

    args = to_args(
        PrepareConfig(
            input=n.RAW_DIR,
            output=n.DATASET_OUT_DIR,
            dataset=cfg.dataset_name,
            image_size=cfg.image_size,
            channels=cfg.channels,
            split_fractions=cfg.split_fractions,
            resource_config=RESOURCE_CONFIG,
        )
    )
    for flag in ("--snapshot", "--exchange"):
        at = args.index(flag)
        args = args[:at] + args[at + 2 :]
    return args


RESOURCE_CONFIG = "/opt/ml/config/resourceconfig.json"  # SageMaker names the instances here


def exchange_uri(ctx: BuildContext) -> str:
    """Where Prepare's instances leave their parts for the first one (pipelines/prepare/parts.py),
    each job under its own job name. A fixed prefix, not one with the execution id: Prepare's
    arguments are its cache key on SageMaker, so they must not change from run to run."""
    return f"{ctx.cfg.s3_root.rstrip('/')}/exchange/{n.PREPARE}"


def raw_input(ctx: BuildContext) -> Any:
    """The raw data, ShardedByS3Key: with ProcessingInstanceCount N each instance downloads
    about 1/N of the objects (one instance gets them all)."""
    from sagemaker.core.shapes import ProcessingInput, ProcessingS3Input

    return ProcessingInput(
        input_name="raw",
        s3_input=ProcessingS3Input(
            s3_uri=ctx.params["input_data_uri"],
            local_path=n.RAW_DIR,
            s3_data_type="S3Prefix",
            s3_input_mode="File",
            s3_data_distribution_type="ShardedByS3Key",
        ),
    )


def dataset_uri(prepare: Any) -> Any:
    """Prepare's dataset output (a property reference)."""
    return prepare.properties.ProcessingOutputConfig.Outputs[n.DATASET_OUTPUT].S3Output.S3Uri


def build_prepare_step(ctx: BuildContext) -> Any:
    from sagemaker.mlops.workflow import ProcessingStep

    proc = processor(
        ctx,
        n.PREPARE_MODULE,
        ctx.params["processing_instance_count"],
        "lepton-prepare",
        tracking=False,  # Prepare never talks to MLflow
    )
    step_args = proc.run(
        inputs=[code_input(ctx), raw_input(ctx)],
        outputs=[
            processing_output(
                n.DATASET_OUTPUT,
                n.DATASET_OUT_DIR,
                step_output_uri(ctx, n.PREPARE, n.DATASET_OUTPUT),
            )
        ],
        arguments=[
            *prepare_arguments(ctx.cfg),
            "--snapshot",
            ctx.params["data_snapshot"],
            "--exchange",
            exchange_uri(ctx),
        ],
    )
    return ProcessingStep(
        n.PREPARE,
        step_args=step_args,
        cache_config=cache_config(ctx),
        retry_policies=job_retry_policies(ctx),
    )


def build_evaluate_step(ctx: BuildContext, prepare: Any, train: Any) -> tuple[Any, Any]:
    """Returns (step, property file)."""
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow import ProcessingStep

    proc = processor(ctx, n.EVALUATE_MODULE, 1, "lepton-evaluate")
    model = train.properties.ModelArtifacts.S3ModelArtifacts
    step_args = proc.run(
        inputs=[
            code_input(ctx),
            processing_input("model", model, n.MODEL_IN_DIR),
            processing_input(n.DATASET_OUTPUT, dataset_uri(prepare), n.DATASET_IN_DIR),
        ],
        outputs=[
            processing_output(
                n.EVALUATION_OUTPUT,
                n.EVALUATION_OUT_DIR,
                step_output_uri(ctx, n.EVALUATE, n.EVALUATION_OUTPUT),
            )
        ],
        arguments=[
            "--model",
            n.MODEL_IN_DIR,
            "--dataset",
            n.DATASET_IN_DIR,
            "--output",
            n.EVALUATION_OUT_DIR,
        ],
    )
    report = PropertyFile(
        name=n.EVALUATION_REPORT, output_name=n.EVALUATION_OUTPUT, path=n.EVALUATION_FILE
    )
    step = ProcessingStep(
        n.EVALUATE,
        step_args=step_args,
        property_files=[report],
        cache_config=cache_config(ctx),
        retry_policies=job_retry_policies(ctx),
    )
    return step, report


def build_deploy_step(ctx: BuildContext, register: Any) -> Any:
    """Locally the step serves the registered version if it is Approved; on AWS it reports the
    package's status: the stack's approval rule deploys (pipelines/deploy/sagemaker.py)."""
    from sagemaker.mlops.workflow import ProcessingStep

    cfg = ctx.cfg
    proc = processor(ctx, n.DEPLOY_MODULE, 1, "lepton-deploy")
    step_args = proc.run(
        inputs=[code_input(ctx)],
        arguments=[
            "--model-package-arn",
            register.properties.ModelPackageArn,
            "--endpoint-name",
            cfg.endpoint_name,
        ],
    )
    return ProcessingStep(n.DEPLOY, step_args=step_args, retry_policies=job_retry_policies(ctx))
