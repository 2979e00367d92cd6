"""The SageMaker Pipeline (SDK v3): `get_pipeline()` and its JSON definition, built offline.

Graph (names fixed; the local runner executes this JSON):

    Prepare -> Train -> Evaluate -> QualityGate --true--> Register -> Deploy
                                               |                  \\-> BatchRequested -> Batch
                                               \\-false-> GateFailed

(Batch only when the BatchInputUri parameter is set: definition/batch.py.)

`build_definition()` makes no AWS call: code that SageMaker would upload is staged in a
`CodeBundle` (content-addressed `s3://<bucket>/<prefix>/code/<digest>` URIs) that
`pipelines.aws.pipeline.upsert` uploads before creating the pipeline (definition/offline.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.definition import names as n
from pipelines.definition.batch import build_batch_condition, build_batch_step
from pipelines.definition.bundle import CodeBundle, stage_source
from pipelines.definition.common import BuildContext, Images
from pipelines.definition.config import PipelineConfig
from pipelines.definition.offline import offline_sdk, offline_session
from pipelines.definition.parameters import sdk_parameters
from pipelines.definition.processing import (
    build_deploy_step,
    build_evaluate_step,
    build_prepare_step,
)
from pipelines.definition.quality import (
    build_gate_failed_step,
    build_gate_step,
    build_register_step,
)
from pipelines.definition.training import build_train_step, train_config_hyperparameters
from pipelines.imports import SOURCE_ROOT, module_file

# Used when the config has no role (local runs): the local runner ignores RoleArn, and
# `pipelines.aws.pipeline.upsert` refuses a config without a real role.
PLACEHOLDER_ROLE_ARN = "arn:aws:iam::000000000000:role/lepton-local-placeholder"


class NoImageError(ValueError):
    """An AWS definition without a container image."""


def resolve_images(cfg: PipelineConfig) -> Images:
    """The project image for every container, or (`stock_images`) the SDK's PyTorch DLC images
    for the region (no AWS call); neither is an error naming both ways out."""
    if cfg.image_uri:
        return Images(cfg.image_uri, cfg.image_uri, cfg.image_uri, stock=False)
    if not cfg.stock_images:
        raise NoImageError(
            "the pipeline has no container image: build it with `lepton image build` (it "
            "records the URI that LEPTON_IMAGE_URI / --image-uri give), or pass "
            "--stock-images to use the SageMaker PyTorch images (they install "
            "infra/image/requirements.txt at every container start)"
        )
    from sagemaker.core import image_uris

    def dlc(scope: str, version: str, instance_type: str) -> str:
        return image_uris.retrieve(
            "pytorch",
            region=cfg.region,
            version=version,
            py_version=cfg.py_version,
            instance_type=instance_type,
            image_scope=scope,
        )

    return Images(
        processing=dlc("training", cfg.framework_version, cfg.processing_instance_type),
        # GPU or CPU flavour follows the *default* TrainingInstanceType; a run that overrides
        # the parameter across that line needs a definition built for it.
        training=dlc("training", cfg.framework_version, cfg.training_instance_type),
        inference=dlc("inference", cfg.inference_framework_version, cfg.endpoint_instance_type),
        stock=True,
    )


def _check_entry_points(code_dir: Path, cfg: PipelineConfig, source_root: Path) -> None:
    """Caught here rather than by SageMaker, hours later."""
    missing = [m for m in n.PROCESSING_MODULES if module_file(m, code_dir) is None]
    if not (code_dir / cfg.train_entry_script).is_file():
        missing.append(cfg.train_entry_script)
    if missing:
        raise FileNotFoundError(
            f"entry points {missing} are missing from the code bundle of {source_root}"
        )


def get_pipeline(
    cfg: PipelineConfig,
    session: Any,
    source_root: Path | None = None,
    staging_root: Path | None = None,
) -> Any:
    """The pipeline for `cfg`. `session` is a PipelineSession: an offline one (see
    `build_definition`) stages uploads, a real one uploads code when `definition()` runs.
    `source_root` is the folder whose packages the steps run (default: this checkout)."""
    from sagemaker.mlops.workflow import Pipeline

    train_config_hyperparameters(cfg)  # fail fast on a bad training setup or override
    params = sdk_parameters(cfg)
    root = source_root or SOURCE_ROOT
    code_dir = stage_source(root, staging_root)
    _check_entry_points(code_dir, cfg, root)
    ctx = BuildContext(
        cfg=cfg,
        params=params,
        session=session,
        code_dir=code_dir,
        role=cfg.role_arn or PLACEHOLDER_ROLE_ARN,
        images=resolve_images(cfg),
    )
    prepare = build_prepare_step(ctx)
    train = build_train_step(ctx, prepare)
    evaluate, report = build_evaluate_step(ctx, prepare, train)
    register = build_register_step(ctx, train, evaluate)
    deploy = build_deploy_step(ctx, register)
    batch = build_batch_condition(ctx, build_batch_step(ctx, train, register))
    gate_failed = build_gate_failed_step(ctx, evaluate, report)
    gate = build_gate_step(
        ctx, evaluate, report, if_steps=[register, deploy, batch], else_steps=[gate_failed]
    )
    return Pipeline(
        name=cfg.pipeline_name,
        parameters=list(params.values()),
        steps=[prepare, train, evaluate, gate],
        sagemaker_session=session,
        pipeline_experiment_config=None,  # tracking is MLflow's job, not SageMaker Experiments
    )


@dataclass(frozen=True)
class BuiltDefinition:
    definition: str  # the pipeline definition JSON
    bundle: CodeBundle  # objects the definition references; upload before running it
    code_dir: Path  # the staged code folder (the packages + the image requirements)

    def parsed(self) -> dict[str, Any]:
        return dict(json.loads(self.definition))


def build_definition(
    cfg: PipelineConfig, source_root: Path | None = None, staging_root: Path | None = None
) -> BuiltDefinition:
    """Build the definition JSON and its code bundle with no AWS call."""
    with offline_sdk(cfg.region):
        session = offline_session(cfg.region, cfg.bucket, _code_prefix(cfg))
        pipeline = get_pipeline(cfg, session, source_root, staging_root)
        definition = pipeline.definition()  # step arguments (and uploads) are evaluated here
    code_dir = stage_source(source_root or SOURCE_ROOT, staging_root)
    return BuiltDefinition(definition=definition, bundle=session.bundle, code_dir=code_dir)


def _code_prefix(cfg: PipelineConfig) -> str:
    return f"{cfg.prefix}/code" if cfg.prefix else "code"
