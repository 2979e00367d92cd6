"""Builder of the Train step: a ModelTrainer job under SageMaker's torchrun driver."""

from __future__ import annotations

from typing import Any

from pipelines.definition import names as n
from pipelines.definition.common import BuildContext, cache_config, job_retry_policies
from pipelines.definition.config import PipelineConfig
from pipelines.definition.parameters import hyperparameter_parameters
from pipelines.definition.processing import dataset_uri


def train_config_hyperparameters(cfg: PipelineConfig) -> dict[str, str]:
    """The serialized training config: the named setup with `extra_hyperparameters` applied
    (an unknown name or a bad value raises ValueError)."""
    from training.config import TrainConfig, named_setup
    from training.serialize import from_hyperparameters, to_hyperparameters

    base = named_setup(cfg.train_setup)
    return to_hyperparameters(
        from_hyperparameters(TrainConfig, dict(cfg.extra_hyperparameters), base=base)
    )


def hyperparameters(ctx: BuildContext) -> dict[str, Any]:
    """Every field of the training config; those a pipeline parameter sets come from it.
    The SDK's torchrun driver passes each as `--name value`; SageMaker also sets SM_HPS."""
    hps: dict[str, Any] = dict(train_config_hyperparameters(ctx.cfg))
    for field_name, param in hyperparameter_parameters().items():
        hps[field_name] = ctx.params[param.field].to_string()
    return hps


def _checkpoint_uri(ctx: BuildContext, prepare: Any) -> Any:
    """Checkpoints shared by exactly the jobs that may resume each other: same code, same
    prepared data (Prepare's job name; stable when Prepare is cached) and same training
    parameters. No execution id: CheckpointConfig is part of Train's cache key."""
    from sagemaker.core.workflow.functions import Join

    p = ctx.params
    knobs = [p[param.field] for param in hyperparameter_parameters().values()]
    return Join(
        on="/",
        values=[
            f"{ctx.cfg.s3_root}/checkpoints/{ctx.code_version}",
            prepare.properties.ProcessingJobName,
            Join(
                on="-",
                values=[*knobs, p["training_instance_count"], p["processes_per_node"]],
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

    cfg, p = ctx.cfg, ctx.params
    env = {
        n.ENV_NPROC_PER_NODE: p["processes_per_node"].to_string(),
        n.ENV_ENTRY_SCRIPT: cfg.train_entry_script,
        "PYTHONPATH": n.TRAIN_CODE_DIR,  # `import training...` from training/train.py
        "PYTHONUNBUFFERED": "1",
    }
    if cfg.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = cfg.tracking_uri
    trainer = ModelTrainer(
        training_image=ctx.images.training,
        # No SDK `distributed=Torchrun(...)`: that bakes the process count into the driver when
        # the definition is built. The SDK's basic script driver runs training/train.py, which
        # starts torchrun for its host with ProcessesPerNode read at run time (launch.py).
        source_code=SourceCode(
            source_dir=str(ctx.code_dir),
            entry_script=cfg.train_entry_script,
            # stock images: the SDK's driver installs the image requirements before training
            requirements=n.IMAGE_REQUIREMENTS if ctx.images.stock else None,
        ),
        compute=Compute(
            instance_type=p["training_instance_type"],
            instance_count=p["training_instance_count"],
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
    step_args = trainer.train(
        input_data_config=[
            InputData(channel_name=n.DATASET_OUTPUT, data_source=dataset_uri(prepare))
        ]
    )
    return TrainingStep(
        n.TRAIN,
        step_args=step_args,
        cache_config=cache_config(ctx),
        retry_policies=job_retry_policies(ctx),
    )
