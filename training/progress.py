"""Per-epoch progress: one line on global rank 0 (loss, accuracy, images/s, about how long the
run has left) + tracker metrics."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl

from training.durations import time_left
from training.tracking import NullTracker


class EpochReporter(pl.Callback):
    """Measures train throughput (validation time excluded) and reports each epoch."""

    def __init__(self, tracker: NullTracker | None = None, world_size: int = 1) -> None:
        super().__init__()
        self.tracker = tracker or NullTracker()
        self.world_size = world_size
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0  # summed over epochs run by this process (not resumed ones)
        self.train_images = 0  # images seen by all ranks in those epochs (estimate: x world)
        self._epoch_start = 0.0
        self._val_seconds = 0.0
        self._val_start = 0.0
        self._local_images = 0
        self._epochs_run = 0  # by this process, and their wall time (validation included)
        self._epochs_seconds = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a mid-epoch resume skips epoch start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._val_seconds = 0.0
        self._local_images = 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._local_images += len(batch[1])

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_seconds += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        train_s = max(elapsed - self._val_seconds, 1e-9)
        images = self._local_images * self.world_size  # DistributedSampler: equal per rank
        self.train_seconds += train_s
        self.train_images += images
        self._epochs_run += 1
        self._epochs_seconds += elapsed
        # every rank reads the metrics: computing a sync_dist metric is a collective
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if getattr(v, "numel", lambda: 1)() == 1
        }
        if not trainer.is_global_zero:
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else 0.0
        metrics.update(
            {
                "lr": float(lr),
                "images_per_s": images / train_s,
                "epoch_train_s": train_s,
                "epoch_val_s": self._val_seconds,
            }
        )
        epoch = trainer.current_epoch
        self.history.append({"epoch": float(epoch), **metrics})
        self.tracker.log_metrics(metrics, step=epoch)
        parts = [f"epoch {epoch + 1}/{trainer.max_epochs}"]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1"):
            if key in metrics:
                parts.append(f"{key} {metrics[key]:.4f}")
        parts.append(f"{metrics['images_per_s']:.0f} img/s")
        parts.append(f"{train_s:.1f}s")
        epochs_left = (trainer.max_epochs or 0) - epoch - 1
        if epochs_left > 0:
            left = epochs_left * self._epochs_seconds / self._epochs_run
            parts.append(f"about {time_left(left)} left")
        print(" | ".join(parts), flush=True)
