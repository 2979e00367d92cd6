"""Builders of the gate and what it guards: QualityGate, GateFailed and Register."""

from __future__ import annotations

from typing import Any

from pipelines.definition import names as n
from pipelines.definition.common import BuildContext


def accuracy(evaluate: Any, report: Any) -> Any:
    from sagemaker.core.workflow.functions import JsonGet

    return JsonGet(step_name=evaluate.name, property_file=report, json_path=n.ACCURACY_JSON_PATH)


def evaluation_file_uri(evaluate: Any, name: str) -> Any:
    """`<Evaluate's evaluation output>/<name>` (a property reference)."""
    from sagemaker.core.workflow.functions import Join

    out = evaluate.properties.ProcessingOutputConfig.Outputs[n.EVALUATION_OUTPUT].S3Output.S3Uri
    return Join(on="/", values=[out, name])


def build_register_step(ctx: BuildContext, train: Any, evaluate: Any) -> Any:
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.mlops.workflow import ModelStep, StepExceptionTypeEnum, StepRetryPolicy
    from sagemaker.serve.model_builder import ModelBuilder

    cfg, p = ctx.cfg, ctx.params
    # The model artifact carries its serving code (model.tar.gz code/: training/export.py).
    # The project image serves it with `serve` (bring-your-own-container); the stock PyTorch
    # inference image loads code/inference.py and installs code/requirements.txt.
    env = {"SAGEMAKER_PROGRAM": "inference.py"} if ctx.images.stock else {}
    builder = ModelBuilder(
        image_uri=ctx.images.inference,
        s3_model_data_url=train.properties.ModelArtifacts.S3ModelArtifacts,
        role_arn=ctx.role,
        sagemaker_session=ctx.session,
        instance_type=cfg.endpoint_instance_type,
        env_vars=env,
    )
    step_args = builder.register(
        model_package_group_name=p["model_package_group"],
        approval_status=p["model_approval_status"],
        content_types=list(n.CONTENT_TYPES),
        response_types=list(n.RESPONSE_TYPES),
        inference_instances=[cfg.endpoint_instance_type],
        transform_instances=[cfg.endpoint_instance_type],
        model_metrics=ModelMetrics(
            model_statistics=MetricsSource(
                content_type="application/json",
                s3_uri=evaluation_file_uri(evaluate, n.EVALUATION_FILE),
            ),
            # the data-quality baseline the drift monitor reads (pipelines/monitor)
            model_data_statistics=MetricsSource(
                content_type="application/json",
                s3_uri=evaluation_file_uri(evaluate, n.BASELINE_FILE),
            ),
        ),
        domain="COMPUTER_VISION",
        task="IMAGE_CLASSIFICATION",
    )
    retry = [
        StepRetryPolicy(
            exception_types=[StepExceptionTypeEnum.SERVICE_FAULT, StepExceptionTypeEnum.THROTTLING],
            interval_seconds=10,
            backoff_rate=2.0,
            max_attempts=max(ctx.cfg.retries, 1),
        )
    ]
    return ModelStep(n.REGISTER, step_args=step_args, retry_policies=retry)


def build_gate_failed_step(ctx: BuildContext, evaluate: Any, report: Any) -> Any:
    from sagemaker.core.workflow.functions import Join
    from sagemaker.mlops.workflow import FailStep

    p = ctx.params
    message = Join(
        on=" ",
        values=[
            "Quality gate failed: test accuracy",
            accuracy(evaluate, report),
            "must be >= AccuracyThreshold",
            p["accuracy_threshold"],
            "and >= MinimumChampionAccuracy (champion accuracy - tolerance)",
            p["minimum_champion_accuracy"],
        ],
    )
    return FailStep(n.GATE_FAILED, error_message=message)


def build_gate_step(
    ctx: BuildContext, evaluate: Any, report: Any, if_steps: list[Any], else_steps: list[Any]
) -> Any:
    """Pass iff accuracy >= AccuracyThreshold and accuracy >= MinimumChampionAccuracy."""
    from sagemaker.core.workflow.conditions import ConditionGreaterThanOrEqualTo
    from sagemaker.mlops.workflow import ConditionStep

    acc = accuracy(evaluate, report)
    return ConditionStep(
        n.GATE,
        conditions=[
            ConditionGreaterThanOrEqualTo(left=acc, right=ctx.params["accuracy_threshold"]),
            ConditionGreaterThanOrEqualTo(left=acc, right=ctx.params["minimum_champion_accuracy"]),
        ],
        if_steps=if_steps,
        else_steps=else_steps,
    )
