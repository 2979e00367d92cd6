"""Fault tolerance: atomic checkpoints, automatic resume, SIGTERM checkpoint.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temp file in the same folder,
  fsyncs, then ``os.replace``s it, so a crash never leaves a half-written ``.ckpt`` under the
  final name (SageMaker syncs the folder to S3 as files appear).
- :class:`PeriodicCheckpoint` saves ``step-<global_step>.ckpt`` every N epochs and at the end,
  keeps the newest ``keep`` and, on SIGTERM (spot interruption, SageMaker stop), saves a
  mid-epoch checkpoint before the process exits. Lightning stores model, optimiser,
  scheduler, loop progress and the train loader's position (training/data.py); RNG needs no
  state because every step reseeds from (seed, step, rank) (training/module.py).
- :func:`find_resume_checkpoint` returns the newest checkpoint that loads and has the
  expected keys; a corrupt newest one is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from training.atomic import atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{9})\.ckpt$")
REQUIRED_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "epoch", "global_step")


def checkpoint_path(checkpoint_dir: str | os.PathLike[str], global_step: int) -> Path:
    return Path(checkpoint_dir) / f"step-{global_step:09d}.ckpt"


def list_checkpoints(checkpoint_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoints in the folder, newest (highest global step) first."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects; raises on a corrupt file."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a checkpoint dict")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    return ckpt


def find_resume_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> Path | None:
    """The newest checkpoint that loads; each unreadable newer one is warned about and skipped."""
    for path in list_checkpoints(checkpoint_dir):
        try:
            load_checkpoint_file(path)
        except Exception as exc:  # a corrupt zip, a truncated file, a foreign object
            message = (
                f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
                "falling back to the previous one"
            )
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            continue
        return path
    return None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to ``.tmp`` in the same folder, fsync, ``os.replace``; loads weights-only."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        target = Path(path)
        atomic_write(target, lambda fh: torch.save(checkpoint, fh))
        _fsync_dir(target.parent)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class GracefulStop(pl.Callback):
    """SIGTERM handling that all ranks agree on, at a step boundary.

    Lightning's own handler runs a ``broadcast`` inside the signal handler, and each rank
    then checks its own flag at batch end; with two ranks signalled at slightly different
    moments the collectives interleave differently and the job hangs until torchrun
    SIGKILLs it (seen in this project's 2-process test). Here the handler only records the
    signal; at each train batch start rank 0's flag is broadcast and every rank sets
    Lightning's ``received_sigterm`` together, so all raise after the same step and save
    one consistent checkpoint.
    """

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # replaces the handler Lightning registered after on_fit_start; Lightning restores
        # the pre-fit handler at teardown
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handler)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        stop = self.requested
        if trainer.world_size > 1:
            import torch.distributed as dist

            flag = torch.tensor([1 if stop else 0], device=trainer.strategy.root_device)
            dist.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop:
            trainer._signal_connector.received_sigterm = True  # raise after this step


class PeriodicCheckpoint(pl.Callback):
    """Checkpoint every ``every_n_epochs`` epochs, at the end of training and on SIGTERM."""

    def __init__(
        self, checkpoint_dir: str | os.PathLike[str], every_n_epochs: int = 1, keep: int = 3
    ) -> None:
        super().__init__()
        if every_n_epochs < 1 or keep < 1:
            raise ValueError("every_n_epochs and keep must be >= 1")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.every_n_epochs = every_n_epochs
        self.keep = keep
        self.saved: list[Path] = []
        self.sigterm_checkpoint: Path | None = None

    def save(self, trainer: pl.Trainer) -> Path:
        """Save now (all ranks must call: Lightning synchronises; global rank 0 writes)."""
        path = checkpoint_path(self.checkpoint_dir, trainer.global_step)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            self.saved.append(path)
            self._prune()
        return path

    def _prune(self) -> None:
        for old in list_checkpoints(self.checkpoint_dir)[self.keep :]:
            try:
                old.unlink()
            except OSError as exc:  # another writer or a sync agent may hold it
                log.warning("could not delete old checkpoint %s: %s", old, exc)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs_done = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epochs_done >= trainer.max_epochs
        if last or epochs_done % self.every_n_epochs == 0:
            self.save(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return  # a crash: the last periodic checkpoint is the safe point to resume from
        try:
            self.sigterm_checkpoint = self.save(trainer)
            if trainer.is_global_zero:
                log.warning("SIGTERM: saved checkpoint %s", self.sigterm_checkpoint)
        except Exception as exc:  # a peer already gone: keep the last periodic checkpoint
            log.error("SIGTERM: could not save a checkpoint (%s)", exc)
