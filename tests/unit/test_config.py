"""PipelineConfig: validation, the argument round trip and the named setups."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest

from pipelines.definition.config import PipelineConfig, aws_default, local_default, mnist_5k
from pipelines.definition.parameters import BY_FIELD, defaults, with_parameters
from pipelines.settings import Settings

ROLE = "arn:aws:iam::123456789012:role/lepton-pipeline"


def _configs() -> list[PipelineConfig]:
    settings = Settings(state_dir=Path("/nonexistent"), region="eu-west-1")
    return [
        PipelineConfig(),
        mnist_5k(),
        local_default(settings),
        aws_default(ROLE, "my-bucket", "eu-west-1"),
        replace(
            PipelineConfig(),
            role_arn=ROLE,
            prefix="a/b",
            image_uri="123.dkr.ecr.eu-west-1.amazonaws.com/x:1",
            use_spot=True,
            max_wait_s=99_999,
            lr_peak=1e-4,
            image_size=(224, 192),
            channels=3,
            split_fractions=(0.7, 0.2, 0.1),
            extra_hyperparameters=(("label_smoothing", "0.1"), ("arch", "resnet18")),
            tracking_uri="arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/x",
            retries=0,
            cache_expire="PT12H",
        ),
    ]


@pytest.mark.parametrize("cfg", _configs())
def test_args_round_trip(cfg: PipelineConfig) -> None:
    assert PipelineConfig.from_args(cfg.to_args()) == cfg


def test_from_args_keeps_base_for_flags_not_given() -> None:
    base = aws_default(ROLE, "b", "us-west-2")
    cfg = PipelineConfig.from_args(["--epochs", "3", "--no-use-spot"], base=base)
    assert cfg == replace(base, epochs=3, use_spot=False)


def test_every_field_has_a_flag() -> None:
    flags = PipelineConfig().to_args()[::2]
    assert {f.name for f in fields(PipelineConfig)} == {f[2:].replace("-", "_") for f in flags}
    assert PipelineConfig.from_args([]) == PipelineConfig()


def test_unknown_argument_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown"):
        PipelineConfig.from_args(["--epoch", "3"])


def test_parameter_defaults_round_trip() -> None:
    cfg = aws_default(ROLE, "b", "us-east-1", epochs=7, lr_peak=0.01)
    values = defaults(cfg)
    assert values["Epochs"] == 7 and values["LearningRate"] == 0.01
    assert values["MinimumChampionAccuracy"] == 0.0
    fields_of_parameters = (
        "input_data_uri",
        "data_snapshot",
        "processing_instance_type",
        "processing_instance_count",
        "training_instance_type",
        "training_instance_count",
        "processes_per_node",
        "epochs",
        "per_device_batch_size",
        "lr_peak",
        "accuracy_threshold",
        "minimum_champion_accuracy",
        "model_approval_status",
        "model_package_group",
        "batch_input_uri",
        "batch_output_uri",
    )
    assert set(BY_FIELD) == set(fields_of_parameters)
    assert with_parameters(PipelineConfig(), values) == replace(
        PipelineConfig(), **{k: getattr(cfg, k) for k in fields_of_parameters}
    )


def test_minimum_champion_accuracy() -> None:
    cfg = PipelineConfig(champion_tolerance=0.01)
    assert cfg.champion_floor(None) == 0.0
    assert cfg.champion_floor(0.98) == pytest.approx(0.97)
    assert cfg.champion_floor(0.005) == 0.0


@pytest.mark.parametrize(
    "changes",
    [
        {"pipeline_name": "bad_name"},
        {"bucket": "b/with/slash"},
        {"prefix": "/lead"},
        {"model_approval_status": "Maybe"},
        {"epochs": 0},
        {"processes_per_node": -1},
        {"use_spot": True, "max_wait_s": 10, "max_run_s": 20},
        {"cache_expire": "30 days"},
        {"channels": 2},
        {"input_data_uri": "/local/path"},
    ],
)
def test_invalid_configs_are_refused(changes: dict) -> None:
    with pytest.raises(ValueError):
        replace(PipelineConfig(), **changes)


def test_training_knob_defaults_follow_the_training_setup() -> None:
    from training.config import named_setup

    cfg = PipelineConfig()
    train = named_setup(cfg.train_setup)
    assert (cfg.epochs, cfg.lr_peak) == (train.epochs, train.lr_peak)
    # The recipe's batch is for one process; the pipeline's default runs two locally, so it
    # halves the per-process batch to keep the recipe's global batch (and step count).
    assert cfg.per_device_batch_size * 2 == train.per_device_batch_size


def test_local_default_uses_settings() -> None:
    settings = Settings(
        state_dir=Path("/x"),
        region="eu-central-1",
        artifact_bucket="art",
        data_bucket="dat",
        registered_model_name="m",
    )
    cfg = local_default(settings)
    assert (cfg.bucket, cfg.region, cfg.model_package_group) == ("art", "eu-central-1", "m")
    assert cfg.input_data_uri == "s3://dat/raw/mnist-5k"
    assert cfg.processes_per_node == 2 and cfg.role_arn is None
    assert cfg.s3_root == "s3://art/pipeline"
