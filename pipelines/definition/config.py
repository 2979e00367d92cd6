"""The pipeline's one typed config, its pipeline parameters, and the named setups.

`PipelineConfig` says what the SageMaker Pipeline definition contains: where it writes, which
images and instances it uses, the defaults of its run-time parameters and the options baked into
its steps. A field declared with :func:`parameter` *is* the declaration of a pipeline parameter:
its name, type (the annotation), default, help text, the field it sets and the step that
consumes it. `pipelines.definition.parameters` derives everything else from these fields (the
SDK parameter objects, CLI flags, the hyperparameter mapping, validation, the README table).
The argument form is `training.serialize` (`to_args` / `from_args`), like every stage config.
Nothing here imports the SageMaker SDK.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from training.serialize import from_args as _from_args
from training.serialize import option, size_shorthand
from training.serialize import to_args as _to_args

if TYPE_CHECKING:
    from pipelines.settings import Settings

APPROVED, PENDING, REJECTED = "Approved", "PendingManualApproval", "Rejected"  # SageMaker's
APPROVAL_STATUSES = (APPROVED, PENDING, REJECTED)
_PIPELINE_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}$")  # SageMaker's own pattern
_ISO_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$")

LOCAL_IMAGE = "lepton:local"  # the image of a local definition (pipelines/runner/environment.py)
# Steps that consume parameters (the definition's step names: pipelines.definition.names).
PREPARE, TRAIN, GATE, REGISTER = "Prepare", "Train", "QualityGate", "Register"
BATCH = "Batch"


def parameter(
    name: str,
    default: Any,
    help: str,
    consumer: str,
    *,
    hyperparameter: str | None = None,
    choices: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
) -> Any:
    """A config field that is also the pipeline parameter `name`, read by step `consumer`.

    `hyperparameter`: the training hyperparameter the parameter sets (Train only).
    `aliases`: extra CLI spellings (`--data` for InputDataUri).
    """
    return option(
        default,
        help=help,
        aliases=aliases,
        parameter=name,
        consumer=consumer,
        hyperparameter=hyperparameter,
        choices=choices,
    )


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    return key, value


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline definition is built from. Units in the names or help texts."""

    # --- identity and storage
    pipeline_name: str = "lepton"
    role_arn: str | None = None  # SageMaker execution role; None -> a placeholder (local runs)
    bucket: str = "lepton-artifacts"  # everything the pipeline writes goes under s3://bucket/prefix
    prefix: str = "pipeline"  # S3 key prefix, no leading or trailing "/"
    region: str = "us-east-1"
    input_data_uri: str = parameter(
        "InputDataUri",
        "s3://lepton-data/raw/mnist-5k",
        "s3:// prefix of the raw images (ImageFolder layout) or of a .jsonl manifest",
        PREPARE,
        aliases=("data",),
    )
    # SageMaker caches a step by its arguments: without an identity of the data in Prepare's
    # arguments, new objects under the same InputDataUri would be a cache hit for 30 days.
    data_snapshot: str = parameter(
        "DataSnapshot",
        "",
        "identity of the raw-data snapshot (a listing digest, a batch id); "
        "`lepton pipeline start` and the triggers set it, so new data is never a stale cache hit",
        PREPARE,
    )

    # --- the container image of every step and of the endpoint (infra/image/, `lepton image
    # build` records its URI); stock_images: the SageMaker PyTorch DLC images instead, which
    # install infra/image/requirements.txt when each container starts (slower; a fallback)
    image_uri: str | None = None
    stock_images: bool = False
    framework_version: str = "2.8"  # stock images: PyTorch DLC version of training/processing
    inference_framework_version: str = "2.6"  # stock images: newest PyTorch *inference* DLC
    py_version: str = "py312"

    # --- compute (defaults of the run-time parameters)
    processing_instance_type: str = parameter(
        "ProcessingInstanceType", "ml.m5.xlarge", "instance type of the Prepare job", PREPARE
    )
    processing_instance_count: int = parameter(
        "ProcessingInstanceCount", 1, "instances of the Prepare job", PREPARE
    )
    training_instance_type: str = parameter(
        "TrainingInstanceType", "ml.g5.2xlarge", "instance type of the training job", TRAIN
    )
    training_instance_count: int = parameter(
        "TrainingInstanceCount", 1, "hosts of the training job (multi-node DDP)", TRAIN
    )
    processes_per_node: int = parameter(
        "ProcessesPerNode",
        0,
        "training processes per host; 0 = one per GPU (1 on a CPU host)",
        TRAIN,
        aliases=("nproc",),
    )
    volume_size_gb: int = 30  # EBS volume per processing/training instance
    max_run_s: int = 3 * 3600  # training job stopping condition, seconds
    use_spot: bool = False  # managed spot training
    max_wait_s: int = 6 * 3600  # spot: total seconds including waiting for capacity (>= max_run_s)

    # --- training (defaults of the run-time parameters)
    train_entry_script: str = "training/train.py"  # path inside the code bundle (repo layout)
    train_setup: str = "mnist_default"  # training.config named setup: every other training knob
    # The three knobs that are pipeline parameters; defaults = training's mnist_default (tested).
    epochs: int = parameter(
        "Epochs",
        16,
        "training epochs (passes over the train split)",
        TRAIN,
        hyperparameter="epochs",
    )
    # images per process per step; 64 x 2 local processes = global 128: 98.6% test accuracy on
    # mnist-5k in 16 epochs (`make pipeline-run`, 2026-11-22), where 128 x 2 gave 97.5%
    per_device_batch_size: int = parameter(
        "PerDeviceBatchSize",
        64,
        "images per training process per optimiser step",
        TRAIN,
        hyperparameter="per_device_batch_size",
    )
    lr_peak: float = parameter(
        "LearningRate",
        4e-3,
        "peak learning rate of the schedule",
        TRAIN,
        hyperparameter="lr_peak",
    )
    extra_hyperparameters: tuple[tuple[str, str], ...] = option(
        (), help="NAME=VALUE training config fields over train_setup", repeat=True, shorthand=_pair
    )
    tracking_uri: str | None = None  # MLflow URI or SageMaker MLflow ARN given to Train/Evaluate

    # --- prepare options baked into the Prepare step's arguments
    dataset_name: str = ""  # "" -> prepare names it after the input prefix
    image_size: tuple[int, int] = option(
        (28, 28), help="(height, width) pixels: H,W or N", shorthand=size_shorthand
    )
    channels: int = 1  # 1 grayscale, 3 RGB
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test

    # --- gate, registry, deployment
    accuracy_threshold: float = parameter(
        "AccuracyThreshold", 0.985, "gate: test accuracy a model needs to be registered", GATE
    )
    champion_tolerance: float = 0.005  # how much worse than the champion a challenger may be
    minimum_champion_accuracy: float = parameter(
        "MinimumChampionAccuracy",
        0.0,
        "gate: champion's accuracy minus the tolerance (computed by whoever starts a run)",
        GATE,
    )
    model_approval_status: str = parameter(
        "ModelApprovalStatus",
        "PendingManualApproval",
        "approval status of the registered model version",
        REGISTER,
        choices=APPROVAL_STATUSES,
    )
    model_package_group: str = parameter(
        "ModelPackageGroupName", "lepton-classifier", "model package group (registry)", REGISTER
    )
    endpoint_name: str = "lepton-classifier"
    endpoint_instance_type: str = "ml.m5.large"  # the package's inference instance type

    # --- batch inference after Register: the Batch step runs only when BatchInputUri is set
    batch_input_uri: str = parameter(
        "BatchInputUri",
        "",
        "s3:// prefix of images the Batch step classifies with the registered model; "
        "'' = no Batch step",
        BATCH,
    )
    batch_output_uri: str = parameter(
        "BatchOutputUri",
        "",
        "s3:// prefix of the Batch step's <key>.out results; '' = the execution's own prefix",
        BATCH,
    )
    batch_instance_type: str = "ml.c5.2xlarge"  # compute-optimised: decode + CPU inference

    # --- orchestration
    retries: int = 2  # extra attempts of a processing/training step on transient failures
    cache_expire: str = "P30D"  # ISO 8601 duration a cached step result stays valid

    def __post_init__(self) -> None:
        if not _PIPELINE_NAME.match(self.pipeline_name):
            raise ValueError(f"pipeline_name {self.pipeline_name!r} is not a valid pipeline name")
        if not self.bucket or "/" in self.bucket:
            raise ValueError(f"bucket must be a bare bucket name, got {self.bucket!r}")
        if self.prefix != self.prefix.strip("/"):
            raise ValueError(f"prefix must not start or end with '/', got {self.prefix!r}")
        if self.model_approval_status not in APPROVAL_STATUSES:
            raise ValueError(
                f"model_approval_status must be one of {APPROVAL_STATUSES}, "
                f"got {self.model_approval_status!r}"
            )
        for name in (
            "processing_instance_count",
            "training_instance_count",
            "epochs",
            "per_device_batch_size",
            "volume_size_gb",
            "max_run_s",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("processes_per_node", "retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr_peak <= 0:
            raise ValueError(f"lr_peak must be > 0, got {self.lr_peak}")
        if self.accuracy_threshold < 0 or self.champion_tolerance < 0:
            raise ValueError("accuracy_threshold and champion_tolerance must be >= 0")
        if not 0 <= self.minimum_champion_accuracy <= 1:
            raise ValueError("minimum_champion_accuracy must lie in 0..1")
        if self.use_spot and self.max_wait_s < self.max_run_s:
            raise ValueError("with use_spot, max_wait_s must be >= max_run_s (SageMaker rule)")
        if not _ISO_DURATION.match(self.cache_expire):
            raise ValueError(f"cache_expire must be ISO 8601, got {self.cache_expire!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.image_uri and self.stock_images:
            raise ValueError("give image_uri or stock_images, not both")
        if not self.input_data_uri.startswith("s3://"):
            raise ValueError(f"input_data_uri must be an s3:// URI, got {self.input_data_uri!r}")
        for name in ("batch_input_uri", "batch_output_uri"):
            if getattr(self, name) and not getattr(self, name).startswith("s3://"):
                raise ValueError(f"{name} must be '' or an s3:// URI, got {getattr(self, name)!r}")
        self._check_hyperparameters_given_once()

    def _check_hyperparameters_given_once(self) -> None:
        """A training knob set by a parameter and again by extra_hyperparameters is an error."""
        owners = {
            f.metadata["hyperparameter"]: f.metadata["parameter"]
            for f in fields(self)
            if f.metadata.get("hyperparameter")
        }
        for key, value in self.extra_hyperparameters:
            name = key.replace("-", "_")
            if name in owners:
                raise ValueError(
                    f"hyperparameter {name!r} is given twice: by the pipeline parameter "
                    f"{owners[name]} and by extra_hyperparameters {key}={value}; "
                    f"set it once, through {owners[name]}"
                )

    # ---- derived values
    @property
    def s3_root(self) -> str:
        """`s3://bucket/prefix`: the root of everything the pipeline writes."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def champion_floor(self, champion_accuracy: float | None) -> float:
        """Value of MinimumChampionAccuracy: champion's accuracy minus the tolerance (>= 0).

        The gate cannot subtract (SageMaker conditions have no arithmetic), so the caller that
        starts an execution computes it from the current champion's accuracy.
        """
        if champion_accuracy is None:
            return 0.0
        return max(0.0, float(champion_accuracy) - self.champion_tolerance)

    # ---- argument form (the one serializer)
    def to_args(self) -> list[str]:
        """`--flag value` arguments that `from_args` parses back into this config."""
        return _to_args(self, dashes=True)

    @classmethod
    def from_args(cls, argv: list[str], base: PipelineConfig | None = None) -> PipelineConfig:
        """Parse `to_args()`-style arguments; flags not given keep `base`'s values."""
        return _from_args(cls, argv, base, ignore_prefixes=())


# ---- named setups -----------------------------------------------------------------------


def mnist_5k(**overrides: Any) -> PipelineConfig:
    """mnist-5k: 28x28 grayscale digits; the gate asks for the project's 98.5 % target."""
    base = PipelineConfig(
        dataset_name="mnist-5k", image_size=(28, 28), channels=1, accuracy_threshold=0.985
    )
    return replace(base, **overrides)


def local_default(settings: Settings) -> PipelineConfig:
    """The local runner's pipeline: project buckets, mnist-5k, 2 CPU training processes."""
    return mnist_5k(
        dataset_name="",  # named by Prepare after its input, whatever InputDataUri a run gives
        bucket=settings.artifact_bucket,
        region=settings.region,
        input_data_uri=f"s3://{settings.data_bucket}/raw/mnist-5k",
        training_instance_type="ml.m5.xlarge",  # a CPU type: the local runner never uses a GPU
        processes_per_node=2,
        image_uri=LOCAL_IMAGE,  # the local runner runs the image's environment, not the image
        model_package_group=settings.registered_model_name,
        tracking_uri=settings.tracking_uri,
    )


def aws_default(role_arn: str | None, bucket: str, region: str, **overrides: Any) -> PipelineConfig:
    """SageMaker: one GPU instance, one process per GPU, managed spot with a 2x wait budget."""
    return mnist_5k(
        role_arn=role_arn,
        bucket=bucket,
        region=region,
        training_instance_type="ml.g5.2xlarge",
        processes_per_node=0,
        use_spot=True,
        **overrides,
    )


def aws_from_settings(settings: Settings, **overrides: Any) -> PipelineConfig:
    """`aws_default` with role, buckets, names and tracking server from `settings` (which
    `lepton infra outputs --format env` exports, or `--stack` reads from the stack)."""
    optional = {
        "image_uri": settings.image_uri,
        "model_package_group": settings.registered_model_name,
        "input_data_uri": settings.raw_data_uri,
        "pipeline_name": settings.pipeline_name,
        "endpoint_name": settings.endpoint_name,
        "tracking_uri": settings.tracking_uri_override,
    }
    given = {k: v for k, v in optional.items() if v}
    return aws_default(
        settings.sagemaker_role_arn,
        settings.artifact_bucket,
        settings.region,
        **{**given, **overrides},
    )
