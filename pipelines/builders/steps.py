"""One builder function per pipeline step (SageMaker SDK v3, imported lazily).

Every builder takes the `BuildContext` and the upstream steps it reads from; data flows only
through property references (`Steps.<Name>....`), so the dependencies are in the JSON itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.builders import names as n
from pipelines.builders.params import Params
from pipelines.config import PipelineConfig


@dataclass(frozen=True)
class Images:
    processing: str
    training: str
    inference: str


@dataclass(frozen=True)
class BuildContext:
    cfg: PipelineConfig
    params: Params
    session: Any  # a PipelineSession (offline or real)
    code_dir: Path  # staged code folder (see builders.offline.stage_source)
    role: str
    images: Images

    @property
    def code_version(self) -> str:
        return self.code_dir.parent.name  # the staged folder's content digest


# ---- shared pieces ---------------------------------------------------------------------


def _cache(ctx: BuildContext) -> Any:
    from sagemaker.mlops.workflow import CacheConfig

    return CacheConfig(enable_caching=True, expire_after=ctx.cfg.cache_expire)


def _job_retry_policies(ctx: BuildContext) -> list[Any]:
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


def _step_output_uri(ctx: BuildContext, step: str, output: str) -> Any:
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


def _input(name: str, source: Any, destination: str) -> Any:
    from sagemaker.core.shapes import ProcessingInput, ProcessingS3Input

    return ProcessingInput(
        input_name=name,
        s3_input=ProcessingS3Input(
            s3_uri=source, local_path=destination, s3_data_type="S3Prefix", s3_input_mode="File"
        ),
    )


def _output(name: str, source: str, destination: Any) -> Any:
    from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output

    return ProcessingOutput(
        output_name=name,
        s3_output=ProcessingS3Output(
            s3_uri=destination, local_path=source, s3_upload_mode="EndOfJob"
        ),
    )


def _processor(ctx: BuildContext, script: str, instance_count: Any, base_job_name: str) -> Any:
    """`python3 /opt/ml/processing/input/code/<script>`; the code bundle is the "code" input."""
    from sagemaker.core.processing import Processor

    env = {"PYTHONUNBUFFERED": "1"}
    if ctx.cfg.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = ctx.cfg.tracking_uri
    return Processor(
        role=ctx.role,
        image_uri=ctx.images.processing,
        instance_count=instance_count,
        instance_type=ctx.params.processing_instance_type,
        entrypoint=["python3", f"{n.CODE_DIR}/{script}"],
        volume_size_in_gb=ctx.cfg.volume_size_gb,
        base_job_name=base_job_name,
        sagemaker_session=ctx.session,
        env=env,
    )


def _code_input(ctx: BuildContext) -> Any:
    return _input(n.CODE_INPUT, str(ctx.code_dir), n.CODE_DIR)  # local: the session uploads it


# ---- the steps -------------------------------------------------------------------------


def prepare_arguments(cfg: PipelineConfig) -> list[str]:
    """Prepare's container arguments: `pipelines.data.config.to_args` of the prepare config."""
    from pipelines.data.config import PrepareConfig, to_args

    return to_args(
        PrepareConfig(
            input=n.RAW_DIR,
            output=n.DATASET_OUT_DIR,
            dataset=cfg.dataset_name,
            image_size=cfg.image_size,
            channels=cfg.channels,
            split_fractions=cfg.split_fractions,
        )
    )


def build_prepare_step(ctx: BuildContext) -> Any:
    from sagemaker.mlops.workflow import ProcessingStep

    processor = _processor(
        ctx, "prepare.py", ctx.params.processing_instance_count, "lepton-prepare"
    )
    step_args = processor.run(
        inputs=[_code_input(ctx), _input("raw", ctx.params.input_data_uri, n.RAW_DIR)],
        outputs=[
            _output(
                n.DATASET_OUTPUT,
                n.DATASET_OUT_DIR,
                _step_output_uri(ctx, n.PREPARE, n.DATASET_OUTPUT),
            )
        ],
        arguments=prepare_arguments(ctx.cfg),
    )
    return ProcessingStep(
        n.PREPARE,
        step_args=step_args,
        cache_config=_cache(ctx),
        retry_policies=_job_retry_policies(ctx),
    )


def train_config_hyperparameters(cfg: PipelineConfig) -> dict[str, str]:
    """`training.config.to_hyperparameters` of the named setup with `extra_hyperparameters`
    applied (an unknown name raises ValueError)."""
    from training.config import from_hyperparameters, named_setup, to_hyperparameters

    return to_hyperparameters(
        from_hyperparameters(dict(cfg.extra_hyperparameters), base=named_setup(cfg.train_setup))
    )


def hyperparameters(ctx: BuildContext) -> dict[str, Any]:
    """Every field of the training config, with the three run-time knobs from parameters.
    The SDK's torchrun driver passes each as `--name value`; SageMaker also sets SM_HPS."""
    p = ctx.params
    hps: dict[str, Any] = dict(train_config_hyperparameters(ctx.cfg))
    hps.update(
        {
            "epochs": p.epochs.to_string(),
            "per_device_batch_size": p.per_device_batch_size.to_string(),
            "lr_peak": p.learning_rate.to_string(),
        }
    )
    return hps


def _checkpoint_uri(ctx: BuildContext, prepare: Any) -> Any:
    """Checkpoints shared by exactly the jobs that may resume each other: same code, same
    prepared data (Prepare's job name; stable when Prepare is cached) and same parameters.
    No execution id: CheckpointConfig is part of Train's cache key."""
    from sagemaker.core.workflow.functions import Join

    p = ctx.params
    return Join(
        on="/",
        values=[
            f"{ctx.cfg.s3_root}/checkpoints/{ctx.code_version}",
            prepare.properties.ProcessingJobName,
            Join(
                on="-",
                values=[
                    p.epochs,
                    p.per_device_batch_size,
                    p.learning_rate,
                    p.training_instance_count,
                    p.processes_per_node,
                ],
            ),
        ],
    )


def build_train_step(ctx: BuildContext, prepare: Any) -> Any:
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        OutputDataConfig,
        SourceCode,
        StoppingCondition,
    )
    from sagemaker.mlops.workflow import TrainingStep
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun

    cfg, p = ctx.cfg, ctx.params
    env = {
        n.ENV_NPROC_PER_NODE: p.processes_per_node.to_string(),
        n.ENV_ENTRY_SCRIPT: cfg.train_entry_script,
        "PYTHONPATH": n.TRAIN_CODE_DIR,  # `import training...` from training/train.py
        "PYTHONUNBUFFERED": "1",
    }
    if cfg.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = cfg.tracking_uri
    trainer = ModelTrainer(
        training_image=ctx.images.training,
        source_code=SourceCode(source_dir=str(ctx.code_dir), entry_script=cfg.train_entry_script),
        # Baked into the SDK's driver files: on SageMaker ProcessesPerNode does not change it
        # (None -> one process per GPU); the local runner reads LEPTON_NPROC_PER_NODE instead.
        distributed=Torchrun(process_count_per_node=cfg.processes_per_node or None),
        compute=Compute(
            instance_type=p.training_instance_type,
            instance_count=p.training_instance_count,
            volume_size_in_gb=cfg.volume_size_gb,
            enable_managed_spot_training=cfg.use_spot or None,
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=cfg.max_run_s,
            max_wait_time_in_seconds=cfg.max_wait_s if cfg.use_spot else None,
        ),
        checkpoint_config=CheckpointConfig(
            s3_uri=_checkpoint_uri(ctx, prepare), local_path=n.CHECKPOINT_DIR
        ),
        output_data_config=OutputDataConfig(s3_output_path=f"{cfg.s3_root}/models"),
        hyperparameters=hyperparameters(ctx),
        environment=env,
        role=ctx.role,
        base_job_name="lepton-train",
        sagemaker_session=ctx.session,
    )
    dataset = prepare.properties.ProcessingOutputConfig.Outputs[n.DATASET_OUTPUT].S3Output.S3Uri
    step_args = trainer.train(
        input_data_config=[InputData(channel_name=n.DATASET_OUTPUT, data_source=dataset)]
    )
    return TrainingStep(
        n.TRAIN,
        step_args=step_args,
        cache_config=_cache(ctx),
        retry_policies=_job_retry_policies(ctx),
    )


def build_evaluate_step(ctx: BuildContext, prepare: Any, train: Any) -> tuple[Any, Any]:
    """Returns (step, property file)."""
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow import ProcessingStep

    processor = _processor(ctx, "evaluate.py", 1, "lepton-evaluate")
    dataset = prepare.properties.ProcessingOutputConfig.Outputs[n.DATASET_OUTPUT].S3Output.S3Uri
    step_args = processor.run(
        inputs=[
            _code_input(ctx),
            _input("model", train.properties.ModelArtifacts.S3ModelArtifacts, n.MODEL_IN_DIR),
            _input(n.DATASET_OUTPUT, dataset, n.DATASET_IN_DIR),
        ],
        outputs=[
            _output(
                n.EVALUATION_OUTPUT,
                n.EVALUATION_OUT_DIR,
                _step_output_uri(ctx, n.EVALUATE, n.EVALUATION_OUTPUT),
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
        cache_config=_cache(ctx),
        retry_policies=_job_retry_policies(ctx),
    )
    return step, report


def accuracy(evaluate: Any, report: Any) -> Any:
    from sagemaker.core.workflow.functions import JsonGet

    return JsonGet(step_name=evaluate.name, property_file=report, json_path=n.ACCURACY_JSON_PATH)


def evaluation_json_uri(evaluate: Any) -> Any:
    from sagemaker.core.workflow.functions import Join

    out = evaluate.properties.ProcessingOutputConfig.Outputs[n.EVALUATION_OUTPUT].S3Output.S3Uri
    return Join(on="/", values=[out, n.EVALUATION_FILE])


def build_register_step(ctx: BuildContext, train: Any, evaluate: Any) -> Any:
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.mlops.workflow import ModelStep, StepExceptionTypeEnum, StepRetryPolicy
    from sagemaker.serve.model_builder import ModelBuilder

    cfg, p = ctx.cfg, ctx.params
    sourcedir = ctx.code_dir.parent / "sourcedir.tar.gz"
    builder = ModelBuilder(
        image_uri=ctx.images.inference,
        s3_model_data_url=train.properties.ModelArtifacts.S3ModelArtifacts,
        role_arn=ctx.role,
        sagemaker_session=ctx.session,
        instance_type=cfg.endpoint_instance_type,
        env_vars={  # the SageMaker PyTorch inference container runs inference/handler.py
            "SAGEMAKER_PROGRAM": cfg.inference_program,
            "SAGEMAKER_SUBMIT_DIRECTORY": ctx.session.upload_data(
                str(sourcedir), bucket=cfg.bucket, key_prefix=f"{cfg.prefix}/code/serve"
            ),
        },
    )
    step_args = builder.register(
        model_package_group_name=p.model_package_group_name,
        approval_status=p.model_approval_status,
        content_types=list(n.CONTENT_TYPES),
        response_types=list(n.RESPONSE_TYPES),
        inference_instances=[cfg.endpoint_instance_type],
        transform_instances=[cfg.endpoint_instance_type],
        model_metrics=ModelMetrics(
            model_statistics=MetricsSource(
                content_type="application/json", s3_uri=evaluation_json_uri(evaluate)
            )
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


def build_deploy_step(ctx: BuildContext, register: Any) -> Any:
    """deploy.py deploys the package only if it is Approved (on AWS); it decides, not the graph."""
    from sagemaker.mlops.workflow import ProcessingStep

    cfg = ctx.cfg
    processor = _processor(ctx, "deploy.py", 1, "lepton-deploy")
    step_args = processor.run(
        inputs=[_code_input(ctx)],
        arguments=[
            "--model-package-arn",
            register.properties.ModelPackageArn,
            "--endpoint-name",
            cfg.endpoint_name,
            "--instance-type",
            cfg.endpoint_instance_type,
            "--instance-count",
            str(cfg.endpoint_instance_count),
            "--role-arn",
            ctx.role,
        ],
    )
    return ProcessingStep(n.DEPLOY, step_args=step_args, retry_policies=_job_retry_policies(ctx))


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
            p.accuracy_threshold,
            "and >= MinimumChampionAccuracy (champion accuracy - tolerance)",
            p.minimum_champion_accuracy,
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
            ConditionGreaterThanOrEqualTo(left=acc, right=ctx.params.accuracy_threshold),
            ConditionGreaterThanOrEqualTo(left=acc, right=ctx.params.minimum_champion_accuracy),
        ],
        if_steps=if_steps,
        else_steps=else_steps,
    )
