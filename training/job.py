"""One training job's inputs and, after fit, what rank 0 needs to finish it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from training.config import TrainConfig
from training.env import TrainEnv
from training.tracking import NullTracker


@dataclass(frozen=True)
class JobPaths:
    dataset: str
    model_dir: Path
    output_data_dir: Path | None
    checkpoint_dir: Path


@dataclass(frozen=True)
class Job:
    """Everything a training job is given, resolved once at start."""

    cfg: TrainConfig
    env: TrainEnv
    paths: JobPaths
    manifest: dict[str, Any]
    manifest_sha: str
    resume: Path | None  # the checkpoint it resumes from
    tracker: NullTracker
    verify_data: bool = True  # check shard sha256 on read
    report_param_digest: bool = False  # every rank prints its final parameters' sha256 (tests)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def global_batch_size(self) -> int:
        return self.cfg.per_device_batch_size * self.env.world_size


@dataclass(frozen=True)
class Fitted:
    """The result of `trainer.fit`."""

    module: Any  # training.module.ClassifierModule
    data: Any  # training.data.ShardDataModule
    trainer: pl.Trainer
    reporter: Any  # training.progress.EpochReporter
    fit_seconds: float
