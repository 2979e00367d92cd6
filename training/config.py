"""The training stage's typed config and its named setups.

Its CLI / SageMaker-hyperparameter forms are `training.serialize`'s: ``from_args(to_args(cfg))
== cfg`` and ``from_hyperparameters(to_hyperparameters(cfg)) == cfg`` hold for every config
(tested), so a config survives the trip through a pipeline definition, where SageMaker
hyperparameters are strings and reach the entry point as ``--name value``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from training import serialize

ARCHS = ("small_cnn", "resnet18", "mobilenet_v3_small", "efficientnet_b0")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine")
PRECISIONS = ("auto", "bf16", "32")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run. Units are in the comments; batch sizes are per process."""

    arch: str = "small_cnn"  # one of ARCHS
    width: int = 16  # small_cnn: channels of the first block (x2, x4 deeper)
    epochs: int = 16  # passes over the train split
    per_device_batch_size: int = 128  # images per process per optimiser step
    lr_peak: float = 4e-3  # peak learning rate (after warm-up)
    weight_decay: float = 5e-4  # decoupled (AdamW) or L2 (SGD) weight decay
    optimizer: str = "adamw"  # one of OPTIMIZERS
    momentum: float = 0.9  # SGD momentum; AdamW beta1 is fixed at 0.9
    schedule: str = "onecycle"  # one of SCHEDULES
    warmup_steps: int = 100  # optimiser steps of linear warm-up to lr_peak
    label_smoothing: float = 0.1  # cross-entropy target smoothing, 0..1
    precision: str = "auto"  # auto: bf16 autocast (CPU and GPU) where supported; "32": fp32
    channels_last: bool = True  # NHWC memory format for convolutions
    aug_shift_px: float = 2.0  # max random translation per axis, pixels (train only)
    aug_rotate_deg: float = 10.0  # max random rotation, degrees (train only)
    aug_scale: float = 0.0  # max random zoom, fraction (0.1 = 0.9x..1.1x) (train only)
    aug_hflip: bool = False  # random horizontal flip (not for digits)
    # random resized crop: min fraction of the image area kept (0 = off; e.g. 0.35 keeps
    # 35-100% of the area, aspect 3/4..4/3), resized back to the input size (train only)
    aug_crop_scale: float = 0.0
    seed: int = 0  # seeds init, sampler order and per-step augmentation
    checkpoint_every_epochs: int = 1  # write a checkpoint every N epochs (and at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept (older ones deleted), >= 2
    num_workers: int = 0  # DataLoader workers per process for a split held in memory
    # a dataset whose train+val splits take more than this decoded (uint8 pixels) is
    # streamed from its shards instead of held in memory; bytes per process
    data_in_memory_max_bytes: int = 512 * 2**20
    stream_workers: int = 2  # DataLoader decode workers per process when streaming
    shuffle_buffer: int = 2048  # encoded samples per stream worker shuffled together
    num_threads: int = 0  # torch intra-op threads per process; 0 = leave the default
    eval_batch_size: int = 500  # images per forward pass in validation / final evaluation
    pretrained_weights: str = ""  # path or s3:// URI (.safetensors or torch state dict)
    freeze_backbone_epochs: int = 0  # epochs training only the head before unfreezing
    process_group_timeout_s: int = 600  # a collective hung longer than this fails the job
    limit_train_batches: int = 0  # >0: only this many train batches per epoch (dev runs)
    limit_val_batches: int = 0  # >0: only this many val batches per epoch (dev runs)

    def __post_init__(self) -> None:
        checks = {
            "arch": self.arch in ARCHS,
            "optimizer": self.optimizer in OPTIMIZERS,
            "schedule": self.schedule in SCHEDULES,
            "precision": self.precision in PRECISIONS,
            "epochs": self.epochs >= 1,
            "per_device_batch_size": self.per_device_batch_size >= 1,
            "lr_peak": self.lr_peak > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "label_smoothing": 0.0 <= self.label_smoothing < 1.0,
            "checkpoint_every_epochs": self.checkpoint_every_epochs >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 2,
            "freeze_backbone_epochs": 0 <= self.freeze_backbone_epochs <= self.epochs,
            "process_group_timeout_s": self.process_group_timeout_s >= 1,
            "width": self.width >= 1,
            "aug_crop_scale": 0.0 <= self.aug_crop_scale <= 1.0,
            "data_in_memory_max_bytes": self.data_in_memory_max_bytes >= 0,
            "stream_workers": self.stream_workers >= 0,
            "shuffle_buffer": self.shuffle_buffer >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {name: getattr(self, name) for name in bad}
            raise ValueError(f"invalid TrainConfig values: {values}")


# ---------------------------------------------------------------------------------------------
# Named setups: functions, not YAML
# ---------------------------------------------------------------------------------------------
def mnist_default() -> TrainConfig:
    """The default recipe for 28-32 px images.

    Evidence (bench/train_overhead.py, mnist-5k: 3,600 train / 400 val / 1,000 test, 2 CPU
    cores): 98.9% test accuracy after 13.6 s of training (16 epochs, ~4,200 img/s).
    """
    return TrainConfig()


def tiny() -> TrainConfig:
    """A few seconds on 8x8 digits: what the test fixtures train."""
    return TrainConfig(
        width=8,
        epochs=4,
        per_device_batch_size=64,
        lr_peak=1e-2,
        warmup_steps=10,
        aug_shift_px=0.5,
        aug_rotate_deg=5.0,
        num_threads=1,
    )


def dev_run() -> TrainConfig:
    """Smoke test: one epoch of two batches, one val batch."""
    return replace(tiny(), epochs=1, limit_train_batches=2, limit_val_batches=1, warmup_steps=1)


def resnet18_transfer() -> TrainConfig:
    """Transfer learning on larger images: frozen backbone for one epoch, then fine-tuning."""
    return TrainConfig(
        arch="resnet18",
        epochs=10,
        per_device_batch_size=64,
        optimizer="sgd",
        lr_peak=0.05,
        schedule="cosine",
        warmup_steps=200,
        aug_shift_px=8.0,
        aug_rotate_deg=0.0,
        aug_scale=0.1,
        aug_hflip=True,
        freeze_backbone_epochs=1,
    )


def photos() -> TrainConfig:
    """Colour photos and textures of 64-224 px, no pretrained weights: a resnet18 trained from
    scratch (AdamW, one-cycle), with flips and mild zoom and shifts; what a run picks for
    larger images (pipelines/prepare/input_profile.py)."""
    return TrainConfig(
        arch="resnet18",
        epochs=12,
        per_device_batch_size=32,
        lr_peak=2e-3,
        warmup_steps=50,
        aug_shift_px=4.0,
        aug_rotate_deg=0.0,
        aug_scale=0.1,
        aug_hflip=True,
    )


SETUPS: dict[str, Callable[[], TrainConfig]] = {
    "mnist_default": mnist_default,
    "default": mnist_default,
    "tiny": tiny,
    "dev_run": dev_run,
    "resnet18_transfer": resnet18_transfer,
    "photos": photos,
}


def named_setup(name: str) -> TrainConfig:
    try:
        return SETUPS[name]()
    except KeyError:
        raise ValueError(f"unknown setup {name!r}; known: {sorted(SETUPS)}") from None


# ---------------------------------------------------------------------------------------------
# String forms: training.serialize (the one serializer of every stage config), bound here
# to TrainConfig, with one addition: a ``setup`` key or ``--setup`` flag picks the base.
# ---------------------------------------------------------------------------------------------
def to_args(cfg: TrainConfig) -> list[str]:
    """Every field as ``--field_name value`` (strings, for a CLI or a pipeline definition)."""
    return serialize.to_args(cfg)


def to_hyperparameters(cfg: TrainConfig) -> dict[str, str]:
    """Every field as a SageMaker hyperparameter (``{field_name: str}``)."""
    return serialize.to_hyperparameters(cfg)


def from_hyperparameters(hps: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Apply hyperparameters (``field_name`` or ``field-name`` keys) onto ``base``.

    A ``setup`` key picks the base named setup. ``sagemaker_*`` keys (the SDK's own) are
    ignored; any other unknown key is an error, so a typo never trains silently with defaults.
    """
    values = dict(hps)
    setup = values.pop("setup", None)
    cfg = named_setup(str(setup)) if setup is not None else (base or TrainConfig())
    return serialize.from_hyperparameters(TrainConfig, values, base=cfg)


def from_args(argv: Sequence[str], base: TrainConfig | None = None) -> TrainConfig:
    """Parse ``--field value`` flags (as :func:`to_args` writes them; ``--setup NAME`` picks the
    base) onto ``base``."""
    args = list(argv)
    for i, token in enumerate(args):
        flag, sep, value = token.partition("=")
        if flag == "--setup":
            if not sep and i + 1 < len(args):
                value = args[i + 1]
            del args[i : i + (1 if sep else 2)]
            base = named_setup(value)
            break
    return serialize.from_args(TrainConfig, args, base=base or TrainConfig())


def as_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain dict of the config (for MLflow params, metadata and checkpoints)."""
    return dataclasses.asdict(cfg)
