"""training/config.py and training/env.py: round trips and parsing."""

from __future__ import annotations

import dataclasses

import pytest

from training.config import (
    SETUPS,
    TrainConfig,
    from_args,
    from_hyperparameters,
    named_setup,
    to_args,
    to_hyperparameters,
)
from training.env import DEFAULT_CHECKPOINT_DIR, read_env

CUSTOM = TrainConfig(
    arch="resnet18",
    epochs=3,
    lr_peak=0.123456789,
    aug_hflip=True,
    pretrained_weights="s3://bucket/w.safetensors",
    precision="32",
    optimizer="sgd",
    schedule="cosine",
    limit_train_batches=5,
)


@pytest.mark.parametrize("cfg", [TrainConfig(), CUSTOM, *[f() for f in SETUPS.values()]])
def test_args_and_hyperparameters_round_trip(cfg: TrainConfig) -> None:
    assert from_args(to_args(cfg)) == cfg
    hps = to_hyperparameters(cfg)
    assert all(isinstance(v, str) for v in hps.values())
    assert from_hyperparameters(hps) == cfg
    assert len(to_args(cfg)) == 2 * len(dataclasses.fields(TrainConfig))


def test_flags_accept_both_spellings_and_setups() -> None:
    cfg = from_args(["--setup", "tiny", "--per_device_batch_size", "7", "--aug-hflip", "true"])
    assert cfg == dataclasses.replace(named_setup("tiny"), per_device_batch_size=7, aug_hflip=True)


def test_hyperparameters_reject_typos_but_ignore_sagemaker_keys() -> None:
    assert from_hyperparameters({"sagemaker_program": "x", "epochs": "2"}).epochs == 2
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        from_hyperparameters({"epoch": "2"})
    with pytest.raises(ValueError, match="expected int"):
        from_hyperparameters({"epochs": "two"})


def test_invalid_values_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="freeze_backbone_epochs"):
        TrainConfig(epochs=2, freeze_backbone_epochs=3)


def test_read_env_parses_the_sagemaker_contract() -> None:
    env = read_env(
        {
            "SM_CHANNEL_DATASET": "/opt/ml/input/data/dataset",
            "SM_MODEL_DIR": "/opt/ml/model",
            "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data",
            "SM_HPS": '{"epochs": 3, "aug_hflip": true, "arch": "resnet18"}',
            "SM_HOSTS": '["algo-1", "algo-2"]',
            "SM_CURRENT_HOST": "algo-2",
            "SM_NUM_GPUS": "4",
            "RANK": "5",
            "LOCAL_RANK": "1",
            "WORLD_SIZE": "8",
            "LOCAL_WORLD_SIZE": "4",
            "MLFLOW_TRACKING_URI": "http://x",
            "LEPTON_CODE_VERSION": "abc",
        }
    )
    assert env.dataset_dir == "/opt/ml/input/data/dataset"
    assert env.hyperparameters == {"epochs": "3", "aug_hflip": "true", "arch": "resnet18"}
    assert env.hosts == ("algo-1", "algo-2") and env.current_host == "algo-2"
    assert (env.rank, env.local_rank, env.world_size, env.num_nodes) == (5, 1, 8, 2)
    assert env.checkpoint_dir == DEFAULT_CHECKPOINT_DIR and not env.is_global_zero
    assert from_hyperparameters(env.hyperparameters).arch == "resnet18"
    defaults = read_env({"LEPTON_CHECKPOINT_DIR": "/tmp/c"})
    assert (defaults.world_size, defaults.rank, defaults.checkpoint_dir) == (1, 0, "/tmp/c")
    assert defaults.mlflow_tracking_uri is None and defaults.code_version == "unknown"
    with pytest.raises(ValueError, match="SM_HPS"):
        read_env({"SM_HPS": "{not json"})
