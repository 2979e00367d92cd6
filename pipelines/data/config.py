"""The prepare step's typed config and its one argparse definition (CLI and entry point share it)."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from pipelines.storage import is_s3_uri


@dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` reads, how it converts images and where it writes the dataset."""

    input: str  # raw ImageFolder (folder or s3:// prefix) or a .jsonl manifest (path or s3://)
    output: str  # dataset folder or s3:// prefix; manifest.json is written there last
    dataset: str = ""  # name in the manifest; "" -> the last component of `input`
    image_size: tuple[int, int] = (28, 28)  # (height, width) in pixels after resize
    channels: int = 1  # 1 = grayscale (ITU-R 601-2 luma), 3 = RGB
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test; sum 1
    min_images_per_class: int = 10  # usable images a class needs, over all splits, else error
    min_side: int = 8  # pixels; a narrower or shorter image is quarantined as too_small
    max_pixels: int = 50_000_000  # width*height from the header above this -> too_large
    max_file_bytes: int = 64 * 2**20  # bytes; a larger object is not even read (too_large)
    shard_size: int = 10_000  # images per shard at most; a split's shards differ by <= 1
    # pixel bytes per shard at most (H*W*C per image): bounds prepare's and readers' memory;
    # writing one shard peaks at ~5x this in the main process (npz assembled in memory).
    shard_max_bytes: int = 64 * 2**20
    classes: tuple[str, ...] = ()  # class list in index order; () -> class folders, sorted
    imbalance_ratio: float = 10.0  # warn when largest / smallest train class exceeds this
    workers: int = 0  # decode processes; 0 -> every core (does not change the output)
    chunk_size: int = 256  # images per worker task and per spill file (memory ~ this)
    force: bool = False  # redo even when the output already matches input and config
    work_dir: str = ""  # scratch folder for spill files and staged shards; "" -> system temp

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
            "classes": list(self.classes),
            "imbalance_ratio": self.imbalance_ratio,
        }

    def config_sha256(self) -> str:
        # Same formula as training.shards.write_dataset, so both producers agree.
        return hashlib.sha256(
            json.dumps(self.manifest_config(), sort_keys=True).encode()
        ).hexdigest()

    @property
    def output_is_s3(self) -> bool:
        return is_s3_uri(self.output)


def _pair(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected H,W or HxW or N, got {text!r}")
    return int(parts[0]), int(parts[1])


def _fractions(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST fractions, got {text!r}")
    return parts[0], parts[1], parts[2]


def _classes(text: str) -> tuple[str, ...]:
    return tuple(c for c in text.split(",") if c) if text else ()


def add_arguments(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """Add prepare's arguments; `positional` makes input/output positional (RAW OUT)."""
    d = PrepareConfig(input="-", output="-")
    if positional:
        parser.add_argument("input", metavar="RAW", help="raw ImageFolder/.jsonl: path or s3://")
        parser.add_argument("output", metavar="OUT", help="dataset folder or s3:// prefix")
    else:
        parser.add_argument(
            "--input",
            required=True,
            help="raw ImageFolder (folder or s3:// prefix) or .jsonl manifest",
        )
        parser.add_argument("--output", required=True, help="dataset folder or s3:// prefix")
    parser.add_argument("--dataset", default=d.dataset, help="dataset name (default: input's)")
    parser.add_argument(
        "--image-size",
        type=_pair,
        default=d.image_size,
        metavar="H,W",
        help=f"resize to H,W pixels (default {d.image_size[0]},{d.image_size[1]})",
    )
    parser.add_argument("--channels", type=int, choices=(1, 3), default=d.channels)
    parser.add_argument(
        "--split",
        dest="split_fractions",
        type=_fractions,
        default=d.split_fractions,
        metavar="TRAIN,VAL,TEST",
        help="split fractions by content hash (default 0.8,0.1,0.1)",
    )
    parser.add_argument("--min-images-per-class", type=int, default=d.min_images_per_class)
    parser.add_argument("--min-side", type=int, default=d.min_side, help="pixels")
    parser.add_argument("--max-pixels", type=int, default=d.max_pixels, help="width*height")
    parser.add_argument("--max-file-bytes", type=int, default=d.max_file_bytes)
    parser.add_argument("--shard-size", type=int, default=d.shard_size, help="images per shard")
    parser.add_argument(
        "--shard-max-bytes",
        type=int,
        default=d.shard_max_bytes,
        help="pixel bytes per shard at most",
    )
    parser.add_argument(
        "--classes",
        type=_classes,
        default=d.classes,
        metavar="A,B,...",
        help="class list in index order (default: class folders, sorted)",
    )
    parser.add_argument("--imbalance-ratio", type=float, default=d.imbalance_ratio)
    parser.add_argument("--workers", type=int, default=d.workers, help="0 = every core")
    parser.add_argument("--chunk-size", type=int, default=d.chunk_size)
    parser.add_argument("--force", action="store_true", help="redo even if up to date")
    parser.add_argument("--work-dir", default=d.work_dir, help="scratch folder")


def config_from_args(ns: argparse.Namespace) -> PrepareConfig:
    """The PrepareConfig of parsed arguments (extra attributes on `ns` are ignored)."""
    return PrepareConfig(**{f.name: getattr(ns, f.name) for f in fields(PrepareConfig)})


def to_args(cfg: PrepareConfig) -> list[str]:
    """Arguments that `add_arguments` parses back into `cfg` (for pipeline definitions)."""
    args = ["--input", cfg.input, "--output", cfg.output]
    if cfg.dataset:
        args += ["--dataset", cfg.dataset]
    args += [
        "--image-size",
        f"{cfg.image_size[0]},{cfg.image_size[1]}",
        "--channels",
        str(cfg.channels),
        "--split",
        ",".join(repr(float(f)) for f in cfg.split_fractions),
        "--min-images-per-class",
        str(cfg.min_images_per_class),
        "--min-side",
        str(cfg.min_side),
        "--max-pixels",
        str(cfg.max_pixels),
        "--max-file-bytes",
        str(cfg.max_file_bytes),
        "--shard-size",
        str(cfg.shard_size),
        "--shard-max-bytes",
        str(cfg.shard_max_bytes),
        "--imbalance-ratio",
        repr(float(cfg.imbalance_ratio)),
        "--workers",
        str(cfg.workers),
        "--chunk-size",
        str(cfg.chunk_size),
    ]
    if cfg.classes:
        if any("," in c for c in cfg.classes):
            raise ValueError("class names containing ',' cannot be passed as arguments")
        args += ["--classes", ",".join(cfg.classes)]
    if cfg.force:
        args.append("--force")
    if cfg.work_dir:
        args += ["--work-dir", cfg.work_dir]
    return args
