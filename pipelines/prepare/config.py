"""The prepare step's typed config. Its argument form is `training.serialize` (the one config
serializer): the entry point and `lepton data prepare` parse it, the definition writes it."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from training.serialize import option, size_shorthand
from training.wds import ENCODINGS


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(p) for p in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(c for c in text.split(",") if c)


@dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` reads, how it converts images and where it writes the dataset."""

    input: str  # raw ImageFolder (folder or s3:// prefix) or a .jsonl manifest (path or s3://)
    output: str  # dataset folder or s3:// prefix; manifest.json is written there last
    dataset: str = ""  # name in the manifest; "" -> the last component of `input`
    image_size: tuple[int, int] = option(
        (28, 28), help="(height, width) in pixels after resize: H,W or N", shorthand=size_shorthand
    )
    channels: int = 1  # 1 = grayscale (ITU-R 601-2 luma), 3 = RGB
    split_fractions: tuple[float, float, float] = option(
        (0.8, 0.1, 0.1),
        help="train, val, test fractions (by content hash), sum 1: TRAIN,VAL,TEST",
        aliases=("split",),
        shorthand=_floats,
    )
    min_images_per_class: int = 10  # usable images a class needs, over all splits, else error
    min_side: int = 8  # pixels; a narrower or shorter image is quarantined as too_small
    max_pixels: int = 50_000_000  # width*height from the header above this -> too_large
    max_file_bytes: int = 64 * 2**20  # bytes; a larger object is not even read (too_large)
    # images per shard at most; a split's shards differ by <= 1. High enough that shards of
    # small images still reach ~shard_max_bytes (16 px RGB PNGs: ~2.5 KB a sample in the tar)
    shard_size: int = 50_000
    # tar bytes per shard at most (encoded images + 1.5 KB of tar headers each): a reader
    # holds one shard per worker, and prepare ~2x one shard while it writes them
    shard_max_bytes: int = 128 * 2**20
    encoding: str = "png"  # stored images: png (lossless), webp (lossless), jpeg (lossy)
    jpeg_quality: int = 90  # 1..95, with encoding=jpeg
    keep_original_size: bool = False  # store images at their own size; image_size is then
    # what training and serving resize to (and what mean/std are computed at)
    classes: tuple[str, ...] = option(
        (),
        help="class list in index order (A,B,...); () -> class folders, sorted",
        shorthand=_names,
    )
    imbalance_ratio: float = 10.0  # warn when largest / smallest train class exceeds this
    workers: int = 0  # decode processes; 0 -> every core (does not change the output)
    chunk_size: int = 256  # images per worker task and per spill file (memory ~ this)
    force: bool = False  # redo even when the output already matches input and config
    work_dir: str = ""  # scratch folder for spill files and staged shards; "" -> system temp
    snapshot: str = ""  # identity of the input snapshot (DataSnapshot); recorded in the manifest
    # Several instances (SageMaker ProcessingInstanceCount > 1, each given part of the input):
    # resourceconfig.json names this instance and all of them ("" = one instance), and the
    # instances exchange their partial results under `exchange` (an s3:// prefix or folder).
    resource_config: str = ""
    exchange: str = ""
    exchange_timeout_s: int = 3600  # how long the first instance waits for the others

    def __post_init__(self) -> None:
        if not self.input or not self.output:
            raise ValueError("input and output are required")
        h, w = self.image_size
        if h < 1 or w < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        fr = self.split_fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-9):
            raise ValueError(
                f"split_fractions must be 3 non-negative numbers summing to 1, got {fr}"
            )
        if fr[0] <= 0:
            raise ValueError("the train fraction must be > 0")
        for name in (
            "min_images_per_class",
            "min_side",
            "max_pixels",
            "max_file_bytes",
            "shard_size",
            "shard_max_bytes",
            "chunk_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95, got {self.jpeg_quality}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes has duplicates: {list(self.classes)}")
        if self.imbalance_ratio < 1:
            raise ValueError(f"imbalance_ratio must be >= 1, got {self.imbalance_ratio}")

    @property
    def dataset_name(self) -> str:
        if self.dataset:
            return self.dataset
        tail = self.input.rstrip("/").rsplit("/", 1)[-1]
        if tail.endswith(".jsonl"):
            tail = tail[: -len(".jsonl")]
        return tail or "dataset"

    def manifest_config(self) -> dict[str, Any]:
        """The fields that shape the output (not where it is read from or how fast)."""
        return {
            "dataset": self.dataset_name,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "split_fractions": list(self.split_fractions),
            "min_images_per_class": self.min_images_per_class,
            "min_side": self.min_side,
            "max_pixels": self.max_pixels,
            "max_file_bytes": self.max_file_bytes,
            "shard_size": self.shard_size,
            "shard_max_bytes": self.shard_max_bytes,
            "encoding": self.encoding,
            "jpeg_quality": self.jpeg_quality if self.encoding == "jpeg" else None,
            "keep_original_size": self.keep_original_size,
            "classes": list(self.classes),
            "imbalance_ratio": self.imbalance_ratio,
        }

    def config_sha256(self) -> str:
        # Same formula as training.shards.write_dataset, so both producers agree.
        return hashlib.sha256(
            json.dumps(self.manifest_config(), sort_keys=True).encode()
        ).hexdigest()
