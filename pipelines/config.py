"""The pipeline's one typed config, its argument form, and the named setups.

`PipelineConfig` says what the SageMaker Pipeline definition contains: where it writes, which
images and instances it uses, the defaults of its run-time parameters and the options baked into
its steps. `to_args()` / `from_args()` are the argument form (the CLI parses it, tests check that
`from_args(to_args(cfg)) == cfg`); `parameter_defaults()` is the part a pipeline execution can
override without a new definition. Nothing here imports the SageMaker SDK.
"""

from __future__ import annotations

import argparse
import functools
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.settings import Settings

APPROVAL_STATUSES = ("Approved", "PendingManualApproval", "Rejected")
_PIPELINE_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}$")  # SageMaker's own pattern
_ISO_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline definition is built from. Units in the names or comments."""

    # --- identity and storage
    pipeline_name: str = "lepton"
    role_arn: str | None = None  # SageMaker execution role; None -> a placeholder (local runs)
    bucket: str = "lepton-artifacts"  # everything the pipeline writes goes under s3://bucket/prefix
    prefix: str = "pipeline"  # S3 key prefix, no leading or trailing "/"
    region: str = "us-east-1"
    input_data_uri: str = "s3://lepton-data/raw/mnist-5k"  # default of InputDataUri

    # --- container images; None -> the SDK's PyTorch DLC image for the region (image_uris)
    framework_version: str = "2.8"  # PyTorch DLC version for the default training/processing image
    inference_framework_version: str = "2.6"  # newest PyTorch *inference* DLC the SDK knows
    py_version: str = "py312"
    processing_image_uri: str | None = None
    training_image_uri: str | None = None
    inference_image_uri: str | None = None

    # --- compute (defaults of the run-time parameters)
    processing_instance_type: str = "ml.m5.xlarge"
    processing_instance_count: int = 1
    training_instance_type: str = "ml.g5.2xlarge"
    training_instance_count: int = 1
    processes_per_node: int = 0  # training processes per instance; 0 -> one per GPU (or 1 on CPU)
    volume_size_gb: int = 30  # EBS volume per processing/training instance
    max_run_s: int = 3 * 3600  # training job stopping condition, seconds
    use_spot: bool = False  # managed spot training
    max_wait_s: int = 6 * 3600  # spot: total seconds including waiting for capacity (>= max_run_s)

    # --- training (defaults of the run-time parameters)
    train_entry_script: str = "training/train.py"  # path inside the code bundle (repo layout)
    train_setup: str = "mnist_default"  # training.config named setup: every other training knob
    # The three knobs that are pipeline parameters; defaults = training's mnist_default (tested).
    epochs: int = 16
    # images per process per step; 64 x 2 local processes = global 128: 98.6% test accuracy on
    # mnist-5k in 16 epochs (`make pipeline-run`, 2026-11-22), where 128 x 2 gave 97.5%
    per_device_batch_size: int = 64
    lr_peak: float = 4e-3  # peak learning rate of the schedule
    extra_hyperparameters: tuple[tuple[str, str], ...] = ()  # (field, value) over train_setup
    tracking_uri: str | None = None  # MLflow URI or SageMaker MLflow ARN given to Train/Evaluate

    # --- prepare options baked into the Prepare step's arguments
    dataset_name: str = ""  # "" -> prepare names it after the input prefix
    image_size: tuple[int, int] = (28, 28)  # (height, width) pixels
    channels: int = 1  # 1 grayscale, 3 RGB
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test

    # --- gate, registry, deployment
    accuracy_threshold: float = 0.985  # test accuracy a model needs to be registered
    champion_tolerance: float = 0.005  # how much worse than the champion a challenger may be
    model_approval_status: str = "PendingManualApproval"
    model_package_group: str = "lepton-classifier"
    inference_program: str = "handler.py"  # bundle-root copy of inference/handler.py (shims)
    endpoint_name: str = "lepton-classifier"
    endpoint_instance_type: str = "ml.m5.large"
    endpoint_instance_count: int = 1

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
            "endpoint_instance_count",
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
        if self.use_spot and self.max_wait_s < self.max_run_s:
            raise ValueError("with use_spot, max_wait_s must be >= max_run_s (SageMaker rule)")
        if not _ISO_DURATION.match(self.cache_expire):
            raise ValueError(f"cache_expire must be ISO 8601, got {self.cache_expire!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not self.input_data_uri.startswith("s3://"):
            raise ValueError(f"input_data_uri must be an s3:// URI, got {self.input_data_uri!r}")

    # ---- derived values
    @property
    def s3_root(self) -> str:
        """`s3://bucket/prefix`: the root of everything the pipeline writes."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def parameter_defaults(self) -> dict[str, str | int | float]:
        """Default of each pipeline parameter (name -> value), as the definition holds them."""
        return {
            "InputDataUri": self.input_data_uri,
            "ProcessingInstanceType": self.processing_instance_type,
            "ProcessingInstanceCount": self.processing_instance_count,
            "TrainingInstanceType": self.training_instance_type,
            "TrainingInstanceCount": self.training_instance_count,
            "ProcessesPerNode": self.processes_per_node,
            "Epochs": self.epochs,
            "PerDeviceBatchSize": self.per_device_batch_size,
            "LearningRate": self.lr_peak,
            "AccuracyThreshold": self.accuracy_threshold,
            "MinimumChampionAccuracy": 0.0,  # no champion yet; see minimum_champion_accuracy()
            "ModelApprovalStatus": self.model_approval_status,
            "ModelPackageGroupName": self.model_package_group,
        }

    def with_parameters(self, values: Mapping[str, Any]) -> PipelineConfig:
        """This config with the fields behind the given pipeline parameters replaced."""
        changes = {_PARAMETER_FIELDS[k]: v for k, v in values.items() if k in _PARAMETER_FIELDS}
        return replace(self, **changes)

    def minimum_champion_accuracy(self, champion_accuracy: float | None) -> float:
        """Value of MinimumChampionAccuracy: champion's accuracy minus the tolerance (>= 0).

        The gate cannot subtract (SageMaker conditions have no arithmetic), so the caller that
        starts an execution computes it from the current champion's accuracy.
        """
        if champion_accuracy is None:
            return 0.0
        return max(0.0, float(champion_accuracy) - self.champion_tolerance)

    # ---- argument form
    def to_args(self) -> list[str]:
        """`--flag value` arguments that `from_args` parses back into this config."""
        args: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = _flag(f.name)
            kind = _kind(f.name)
            if value is None:
                continue  # every Optional field defaults to None (checked in tests)
            if kind == "bool":
                args.append(flag if value else "--no-" + flag[2:])
            elif kind == "pairs":
                for key, val in value:
                    args += [flag, f"{key}={val}"]
            elif kind in ("int_tuple", "float_tuple"):
                args += [flag, ",".join(repr(v) for v in value)]
            elif kind == "float":
                args += [flag, repr(float(value))]
            else:
                args += [flag, str(value)]
        return args

    @classmethod
    def from_args(cls, argv: Sequence[str], base: PipelineConfig | None = None) -> PipelineConfig:
        """Parse `to_args()`-style arguments; flags not given keep `base`'s values."""
        parser = argparse.ArgumentParser(prog="pipeline-config", add_help=False, allow_abbrev=False)
        add_arguments(parser)
        ns, unknown = parser.parse_known_args(list(argv))
        if unknown:
            raise ValueError(f"unknown pipeline config arguments: {unknown}")
        return config_from_namespace(ns, base)


# pipeline parameter name -> config field
_PARAMETER_FIELDS = {
    "InputDataUri": "input_data_uri",
    "ProcessingInstanceType": "processing_instance_type",
    "ProcessingInstanceCount": "processing_instance_count",
    "TrainingInstanceType": "training_instance_type",
    "TrainingInstanceCount": "training_instance_count",
    "ProcessesPerNode": "processes_per_node",
    "Epochs": "epochs",
    "PerDeviceBatchSize": "per_device_batch_size",
    "LearningRate": "lr_peak",
    "AccuracyThreshold": "accuracy_threshold",
    "ModelApprovalStatus": "model_approval_status",
    "ModelPackageGroupName": "model_package_group",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@functools.cache
def _kind(name: str) -> str:
    hint = typing.get_type_hints(PipelineConfig)[name]
    if hint is bool:
        return "bool"
    if hint is int:
        return "int"
    if hint is float:
        return "float"
    if hint == tuple[tuple[str, str], ...]:
        return "pairs"
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return "int_tuple" if args[0] is int else "float_tuple"
    return "str"  # str and str | None


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def _tuple_of(conv: type) -> Any:
    def parse(text: str) -> tuple:
        return tuple(conv(p) for p in text.split(",") if p.strip())

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--flag` per config field (defaults are left unset: None means 'not given')."""
    for f in fields(PipelineConfig):
        flag, kind = _flag(f.name), _kind(f.name)
        if kind == "bool":
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None
            )
        elif kind == "pairs":
            parser.add_argument(
                flag, dest=f.name, type=_pair, action="append", default=None, metavar="NAME=VALUE"
            )
        else:
            conv = {
                "int": int,
                "float": float,
                "int_tuple": _tuple_of(int),
                "float_tuple": _tuple_of(float),
            }.get(kind, str)
            parser.add_argument(flag, dest=f.name, type=conv, default=None)


def config_from_namespace(
    ns: argparse.Namespace, base: PipelineConfig | None = None
) -> PipelineConfig:
    """The config of parsed `add_arguments` flags over `base` (extra attributes ignored)."""
    base = base or PipelineConfig()
    changes: dict[str, Any] = {}
    for f in fields(PipelineConfig):
        value = getattr(ns, f.name, None)
        if value is not None:
            changes[f.name] = tuple(value) if _kind(f.name) == "pairs" else value
    return replace(base, **changes)


def optional_fields_default_to_none() -> bool:
    """True when every `X | None` field defaults to None (what `to_args` relies on)."""
    hints = typing.get_type_hints(PipelineConfig)
    for f in fields(PipelineConfig):
        if type(None) in typing.get_args(hints[f.name]) and f.default not in (None, MISSING):
            return False
    return True


# ---- named setups -----------------------------------------------------------------------


def local_default(settings: Settings) -> PipelineConfig:
    """The local runner's pipeline: project buckets, mnist-5k, 2 CPU training processes."""
    return mnist_5k(
        bucket=settings.artifact_bucket,
        region=settings.region,
        input_data_uri=f"s3://{settings.data_bucket}/raw/mnist-5k",
        training_instance_type="ml.m5.xlarge",  # a CPU type: the local runner never uses a GPU
        processes_per_node=2,
        model_package_group=settings.registered_model_name,
    )


def mnist_5k(**overrides: Any) -> PipelineConfig:
    """mnist-5k: 28x28 grayscale digits; the gate asks for the project's 98.5 % target."""
    base = PipelineConfig(
        dataset_name="mnist-5k", image_size=(28, 28), channels=1, accuracy_threshold=0.985
    )
    return replace(base, **overrides)


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
