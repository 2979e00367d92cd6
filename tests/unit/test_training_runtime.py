"""training/runtime.py and checkpoints.py: Trainer wiring, atomic checkpoint files."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from training.checkpoints import (
    AtomicCheckpointIO,
    checkpoint_path,
    find_resume_checkpoint,
    list_checkpoints,
)
from training.config import TrainConfig
from training.env import TrainEnv
from training.runtime import build_trainer, precision_setting


def test_single_process_trainer() -> None:
    trainer = build_trainer(TrainConfig(precision="32"), TrainEnv(None, None, None, "/x"), [])
    assert trainer.world_size == 1 and trainer.max_epochs == TrainConfig().epochs
    assert precision_setting(TrainConfig(precision="bf16"), gpu=False) == "bf16-mixed"
    assert precision_setting(TrainConfig(precision="32"), gpu=True) == "32-true"


def test_ddp_trainer_has_gloo_and_the_configured_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # the process group is joined by torchrun-launched ranks; here only the wiring is checked
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    env = TrainEnv(None, None, None, "/x", world_size=4, local_world_size=2, rank=3, local_rank=1)
    cfg = TrainConfig(process_group_timeout_s=42)
    trainer = build_trainer(cfg, env, [])
    strategy = trainer.strategy
    assert isinstance(strategy, DDPStrategy)
    assert strategy._process_group_backend == "gloo"
    assert strategy._timeout == timedelta(seconds=42)
    assert trainer.num_nodes == 2 and trainer.num_devices == 2
    assert isinstance(strategy.checkpoint_io, AtomicCheckpointIO)


def test_checkpoints_are_atomic_and_ordered(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    state = {
        "state_dict": {"w": torch.ones(2)},
        "optimizer_states": [],
        "lr_schedulers": [],
        "loops": {},
        "epoch": 0,
        "global_step": 0,
    }
    for step in (5, 40, 12):
        io.save_checkpoint({**state, "global_step": step}, checkpoint_path(tmp_path, step))
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-000000040.ckpt",
        "step-000000012.ckpt",
        "step-000000005.ckpt",
    ]
    assert not list(tmp_path.glob("*.tmp"))
    assert (tmp_path / "step-000000040.ckpt").stat().st_mode & 0o777 == 0o644
    checkpoint_path(tmp_path, 40).write_bytes(b"\x00" * 64)  # truncated by a crash or sync
    checkpoint_path(tmp_path, 12).write_bytes(b"")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert find_resume_checkpoint(tmp_path) == checkpoint_path(tmp_path, 5)
    assert find_resume_checkpoint(tmp_path / "missing") is None


def test_a_managed_mlflow_arn_goes_through_the_sagemaker_plugin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ARN tracking URI reaches SageMaker's MLflow endpoint (the sagemaker-mlflow plugin
    signs for the process-wide URI: a bare client once failed with "list index out of
    range"); with no such endpoint reachable, start fails with one clear error."""
    import mlflow

    from training.tracking import TrackingUnavailable, check_reachable

    arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/lepton"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:9",  # nothing listens: fail fast
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }.items():
        monkeypatch.setenv(key, value)
    before = mlflow.get_tracking_uri()
    try:
        with pytest.raises(TrackingUnavailable) as caught:
            check_reachable(arn)
    finally:
        mlflow.set_tracking_uri(before)
    message = str(caught.value)
    assert arn in message and "list index out of range" not in message
    assert "experiments.sagemaker.aws" in message or "127.0.0.1" in message  # the plugin's call
