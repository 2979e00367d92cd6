"""What a Batch job is asked to do: one frozen dataclass, the contract of its command line.

In a module of its own that imports nothing heavy, so `lepton batch predict --help` lists its
fields (training.serialize.add_config_options) without loading numpy, boto3 or the model code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inference.config import DEFAULT_MAX_PIXELS
from training.serialize import option

__all__ = ["BatchConfig", "JOB_FIELDS", "option_flags"]


@dataclass(frozen=True)
class BatchConfig:
    input: str  # folder or s3:// prefix of images (any layout)
    output: str  # folder or s3:// prefix: <key>.out per input object ("" = default_output)
    model: str  # model folder or model.tar.gz
    default_output: str = ""  # where results go when output is "" (the pipeline's prefix)
    model_version: str = ""  # what the results name as their model (a registry reference)
    top_k: int = 3  # labels per answer
    batch_size: int = option(64, help="images per model call")
    workers: int = option(0, help="decode processes; 0 = every core")
    max_pixels: int = DEFAULT_MAX_PIXELS  # width*height above this -> too_large

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.batch_size < 1 or self.workers < 0:
            raise ValueError("top_k and batch_size must be >= 1, workers >= 0")


# Filled in by the job from the pipeline definition or `lepton batch predict`'s positional
# arguments, not options a user passes.
JOB_FIELDS = ("input", "output", "model", "default_output", "model_version")


def option_flags(options: Mapping[str, Any] | None) -> list[str]:
    """BatchConfig fields as the job's command-line arguments (None: left at the default)."""
    return [f"--{name}={value}" for name, value in (options or {}).items() if value is not None]
