"""The SageMaker Pipeline (SDK v3): `get_pipeline()` and its JSON definition, built offline.

Graph (names fixed; the local runner executes this JSON):

    Prepare -> Train -> Evaluate -> QualityGate --true--> Register -> Deploy
                                               \\-false-> GateFailed

`definition_json()` / `build_definition()` make no AWS call: code that SageMaker would upload
is staged in a `CodeBundle` (content-addressed `s3://<bucket>/<prefix>/code/<digest>` URIs) that
`pipelines.aws.upsert` uploads before creating the pipeline. See builders/offline.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.builders import names
from pipelines.builders.names import (  # re-exported: the runner's vocabulary
    DEPLOY,
    EVALUATE,
    GATE,
    GATE_FAILED,
    PREPARE,
    REGISTER,
    TRAIN,
)
from pipelines.builders.offline import CodeBundle, offline_sdk, offline_session, stage_source
from pipelines.builders.params import make_parameters
from pipelines.builders.steps import (
    BuildContext,
    Images,
    build_deploy_step,
    build_evaluate_step,
    build_gate_failed_step,
    build_gate_step,
    build_prepare_step,
    build_register_step,
    build_train_step,
    train_config_hyperparameters,
)
from pipelines.config import PipelineConfig

if TYPE_CHECKING:
    from pipelines.settings import Settings

__all__ = [
    "DEPLOY",
    "EVALUATE",
    "GATE",
    "GATE_FAILED",
    "PREPARE",
    "REGISTER",
    "TRAIN",
    "STEP_NAMES",
    "PARAMETER_NAMES",
    "BuiltDefinition",
    "build_definition",
    "definition_json",
    "get_pipeline",
    "resolve_images",
    "names",
]

STEP_NAMES = (PREPARE, TRAIN, EVALUATE, GATE, REGISTER, DEPLOY, GATE_FAILED)
PARAMETER_NAMES = tuple(PipelineConfig().parameter_defaults())
# Used when the config has no role (local runs): the local runner ignores RoleArn, and
# `pipelines.aws.upsert` refuses a config without a real role.
PLACEHOLDER_ROLE_ARN = "arn:aws:iam::000000000000:role/lepton-local-placeholder"
REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_images(cfg: PipelineConfig) -> Images:
    """The config's image URIs, or the SDK's PyTorch DLC images for the region (no AWS call)."""
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
        processing=cfg.processing_image_uri
        or dlc("training", cfg.framework_version, cfg.processing_instance_type),
        # GPU or CPU flavour follows the *default* TrainingInstanceType; a run that overrides
        # the parameter across that line needs a definition built for it.
        training=cfg.training_image_uri
        or dlc("training", cfg.framework_version, cfg.training_instance_type),
        inference=cfg.inference_image_uri
        or dlc("inference", cfg.inference_framework_version, cfg.endpoint_instance_type),
    )


def get_pipeline(
    cfg: PipelineConfig,
    session: Any,
    source_root: Path | None = None,
    staging_root: Path | None = None,
) -> Any:
    """The pipeline for `cfg`. `session` is a PipelineSession: an offline one (see
    `build_definition`) stages uploads, a real one uploads code when `definition()` runs.
    `source_root` is the repository whose code the steps run (default: this checkout)."""
    from sagemaker.mlops.workflow import Pipeline

    train_config_hyperparameters(cfg)  # fail fast on a bad training setup or override
    params = make_parameters(cfg)
    code_dir = stage_source(source_root or REPO_ROOT, staging_root)
    for script in (cfg.train_entry_script, "prepare.py", "evaluate.py", "deploy.py"):
        if not (code_dir / script).is_file():  # caught here rather than by SageMaker, hours later
            raise FileNotFoundError(
                f"entry point {script} is missing from the code bundle of "
                f"{source_root or REPO_ROOT} (see builders/offline.py)"
            )
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
    gate_failed = build_gate_failed_step(ctx, evaluate, report)
    gate = build_gate_step(
        ctx, evaluate, report, if_steps=[register, deploy], else_steps=[gate_failed]
    )
    return Pipeline(
        name=cfg.pipeline_name,
        parameters=params.all(),
        steps=[prepare, train, evaluate, gate],
        sagemaker_session=session,
        pipeline_experiment_config=None,  # tracking is MLflow's job, not SageMaker Experiments
    )


@dataclass(frozen=True)
class BuiltDefinition:
    definition: str  # the pipeline definition JSON
    bundle: CodeBundle  # objects the definition references; upload before running it
    code_dir: Path  # the staged code folder (repo layout + root copies of entry scripts)

    def parsed(self) -> dict[str, Any]:
        return json.loads(self.definition)


def build_definition(
    cfg: PipelineConfig, source_root: Path | None = None, staging_root: Path | None = None
) -> BuiltDefinition:
    """Build the definition JSON and its code bundle with no AWS call."""
    with offline_sdk(cfg.region):
        session = offline_session(cfg.region, cfg.bucket, _code_prefix(cfg))
        pipeline = get_pipeline(cfg, session, source_root, staging_root)
        definition = pipeline.definition()  # step arguments (and uploads) are evaluated here
    code_dir = stage_source(source_root or REPO_ROOT, staging_root)
    return BuiltDefinition(definition=definition, bundle=session.bundle, code_dir=code_dir)


def definition_json(cfg: PipelineConfig, settings: Settings) -> str:
    """The definition JSON for `cfg`, built offline; code staged under the state folder."""
    return build_definition(cfg, staging_root=settings.state_dir / "code").definition


def _code_prefix(cfg: PipelineConfig) -> str:
    return f"{cfg.prefix}/code" if cfg.prefix else "code"
