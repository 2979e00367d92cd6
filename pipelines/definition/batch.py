"""Builders of the optional batch inference after Register: BatchRequested and Batch.

    Register -> BatchRequested --BatchInputUri == ""--> (nothing)
                               \\-otherwise-----------> Batch

Batch is a Processing job rather than a TransformStep: it lists the prefix itself, so images
from many objects share one model call (Transform sends each object as its own request), a
bad file becomes an error record for its key instead of failing the job, and a rerun skips
keys whose `<key>.out` exists. It reads the images and writes the results straight to S3 (no
ProcessingInput/Output copy of the whole set), with the model the step before registered.
`lepton batch predict` runs this same step as a job of its own (pipelines/batch/job.py).
"""

from __future__ import annotations

from typing import Any

from pipelines.definition import names as n
from pipelines.definition.common import (
    BuildContext,
    code_input,
    job_retry_policies,
    processing_input,
    processor,
    step_output_uri,
)

PREDICTIONS = "predictions"  # the execution's own results prefix: .../executions/<id>/Batch/


def model_data(train: Any) -> Any:
    return train.properties.ModelArtifacts.S3ModelArtifacts


def build_batch_step(ctx: BuildContext, train: Any, register: Any) -> Any:
    from sagemaker.core.workflow.functions import Join
    from sagemaker.mlops.workflow import ProcessingStep

    def flag(name: str, value: Any) -> Any:  # "--name=value": never an empty argument
        return Join(on="", values=[f"--{name}=", value])

    p = ctx.params
    proc = processor(ctx, n.BATCH_MODULE, 1, "lepton-batch", ctx.cfg.batch_instance_type)
    step_args = proc.run(
        inputs=[code_input(ctx), processing_input("model", model_data(train), n.MODEL_IN_DIR)],
        arguments=[
            "--model",
            n.MODEL_IN_DIR,
            flag("input", p["batch_input_uri"]),
            flag("output", p["batch_output_uri"]),
            "--default-output",
            step_output_uri(ctx, n.BATCH, PREDICTIONS),
            "--model-version",
            register.properties.ModelPackageArn,
        ],
    )
    return ProcessingStep(n.BATCH, step_args=step_args, retry_policies=job_retry_policies(ctx))


def build_batch_condition(ctx: BuildContext, batch: Any) -> Any:
    """Batch runs iff BatchInputUri is not empty (no ConditionNot: an Equals, else branch)."""
    from sagemaker.core.workflow.conditions import ConditionEquals
    from sagemaker.mlops.workflow import ConditionStep

    return ConditionStep(
        n.BATCH_REQUESTED,
        conditions=[ConditionEquals(left=ctx.params["batch_input_uri"], right="")],
        if_steps=[],
        else_steps=[batch],
    )
