"""LightningModule: loss, metrics, optimiser and LR schedule around a Classifier.

The network (training/model.py) is a plain ``nn.Module``; this file adds only what training
needs. Per-step randomness (augmentation, dropout) is reseeded from (seed, global step, rank),
so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from training.augment import AugmentConfig, augment_batch, reseed, step_seed
from training.config import TrainConfig
from training.model import Classifier


def lr_factor(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimiser step (for LambdaLR; lr_peak x factor).

    - ``onecycle``: linear warm-up from lr_peak/25 to lr_peak, cosine down to lr_peak/25,000
      (torch's OneCycleLR defaults, without momentum cycling; robust for 1-2 step runs).
    - ``cosine``: linear warm-up from 0, cosine down to 0.
    """
    start, end = (1 / 25, 1 / 25_000) if schedule == "onecycle" else (0.0, 0.0)
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start + (1 - start) * (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class ClassifierModule(pl.LightningModule):
    """Cross-entropy (label smoothing), accuracy + macro F1, AdamW/SGD, OneCycle/cosine."""

    def __init__(self, model: Classifier, cfg: TrainConfig, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.num_classes = num_classes
        self.augment = AugmentConfig(
            cfg.aug_shift_px, cfg.aug_rotate_deg, cfg.aug_scale, cfg.aug_hflip, cfg.aug_crop_scale
        )
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self._generator = torch.Generator()
        self._loss_sum = torch.zeros(())
        self._loss_count = 0
        self.total_steps = 0  # set in configure_optimizers (needs the trainer's data)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW batch -> float32 0..255 in the configured memory format."""
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        return x.to(dtype=torch.float32, memory_format=fmt)

    # -- training ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._reset_train_sums()  # a mid-epoch resume does not call on_train_epoch_start

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed = step_seed(self.cfg.seed, self.global_step, self.global_rank)
        reseed(seed, self.device)  # dropout / stochastic depth
        self._generator.manual_seed(seed)  # augmentation

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        x = self._pixels(x)
        if self.augment.enabled:
            x = augment_batch(x, self.augment, self._generator)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        # Epoch aggregates are kept here and logged once, on the epoch's last batch: a
        # self.log() per step costs ~0.5 ms on CPU in Lightning 2.6 (it re-walks the logged
        # value's metadata), which is 2-4% of a small-CNN step.
        self._loss_sum += loss.detach() * len(y)
        self._loss_count += len(y)
        self.train_acc.update(logits.detach(), y)
        if self.trainer.is_last_batch:
            self._log_train_epoch()
        return loss

    def on_train_epoch_start(self) -> None:
        self._reset_train_sums()
        if self.cfg.freeze_backbone_epochs == 0:
            return
        frozen = self.current_epoch < self.cfg.freeze_backbone_epochs
        self.model.set_backbone_trainable(not frozen)
        head = set(self.model.backbone.get_submodule(self.model.head_name).modules())
        for m in self.model.backbone.modules():
            # a frozen (pretrained) backbone keeps its BatchNorm statistics; unfrozen, they
            # train again (Lightning restores per-module modes after validation, so the
            # mode set here persists for the epoch)
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m not in head:
                m.train(not frozen)

    def _reset_train_sums(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self.train_acc.reset()

    def _log_train_epoch(self) -> None:
        if self._loss_count == 0:
            return
        mean_loss = self._loss_sum / self._loss_count
        self.log(
            "train_loss", mean_loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=1
        )
        # compute() already reduces across ranks; sync_dist then averages equal values
        self.log(
            "train_acc",
            self.train_acc.compute(),
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=1,
        )

    # -- validation --------------------------------------------------------------------------
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(self._pixels(x))
        loss = F.cross_entropy(logits.float(), y)
        self.val_acc.update(logits, y)
        self.val_f1.update(logits, y)
        self.log("val_loss", loss, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("val_acc", self.val_acc, on_epoch=True)
        self.log("val_macro_f1", self.val_f1, on_epoch=True)

    # -- optimiser ---------------------------------------------------------------------------
    def _param_groups(self) -> list[dict[str, Any]]:
        """No weight decay on biases and norm parameters (1-d tensors)."""
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for p in self.model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        return [
            {"params": decay, "weight_decay": self.cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        self.total_steps = int(self.trainer.estimated_stepping_batches)
        assert self.total_steps > 0, "no optimiser steps: empty train split?"
        if cfg.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(
                self._param_groups(), lr=cfg.lr_peak, betas=(cfg.momentum, 0.999)
            )
        else:
            opt = torch.optim.SGD(
                self._param_groups(), lr=cfg.lr_peak, momentum=cfg.momentum, nesterov=True
            )
        # Warm-up never takes more than a fifth of the run: on a small dataset (a few steps per
        # epoch) the configured 100 steps would otherwise leave no time at peak or in decay.
        warmup = min(cfg.warmup_steps, max(1, self.total_steps // 5))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_factor(cfg.schedule, warmup, self.total_steps)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
