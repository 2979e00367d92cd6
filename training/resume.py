"""What a checkpoint records about its job, and whether a new job may resume from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from training.checkpoints import load_checkpoint_file
from training.config import TrainConfig, as_dict

# config fields that may change between an interrupted run and its resumption
RESUME_MUTABLE = {
    "num_workers",
    "num_threads",
    "eval_batch_size",
    "process_group_timeout_s",
    "checkpoint_every_epochs",
    "keep_checkpoints",
    "limit_val_batches",
}


def check_resume_compatible(ckpt_path: Path, cfg: TrainConfig, manifest_sha: str) -> None:
    """SystemExit with the reason when `ckpt_path` was written by another config or dataset."""
    stored = load_checkpoint_file(ckpt_path).get("lepton", {})
    old_cfg, new_cfg = stored.get("config", {}), as_dict(cfg)
    changed = sorted(
        k for k in new_cfg if k not in RESUME_MUTABLE and k in old_cfg and old_cfg[k] != new_cfg[k]
    )
    if changed:
        raise SystemExit(
            f"training: checkpoint {ckpt_path} was written with a different config "
            f"({', '.join(changed)}); use an empty --checkpoint-dir or the same config"
        )
    if stored.get("data_manifest_sha256", manifest_sha) != manifest_sha:
        raise SystemExit(
            f"training: checkpoint {ckpt_path} was trained on another dataset "
            "(manifest sha256 differs); use an empty --checkpoint-dir"
        )


class JobIdentity(pl.Callback):
    """Stores config, dataset identity and world size in every checkpoint."""

    def __init__(self, cfg: TrainConfig, manifest_sha: str, world_size: int) -> None:
        self.payload = {
            "config": as_dict(cfg),
            "data_manifest_sha256": manifest_sha,
            "world_size": world_size,
        }

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["lepton"] = self.payload
