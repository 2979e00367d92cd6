"""Fixtures for the training area (see tests/conftest.py).

- ``tiny_dataset_dir``: a dataset folder in the docs/contracts.md format (manifest.json +
  train/val/test .npz shards + quality_report.json), built straight from scikit-learn's
  ``load_digits()`` (1,797 images, 8x8 px, 1 channel, 10 classes "0".."9"), with no dependency
  on the prepare step. Pixel values are rescaled from 0..16 to 0..255 uint8.
- ``trained_model_dir``: a model dir (model.onnx, model.pt, metadata.json) from a few seconds
  of real training (``python -m training.train --setup tiny`` in a subprocess, tracking
  disabled) on ``tiny_dataset_dir``; ~7 s. Test accuracy is typically > 0.95; do not rely on
  more than 0.6. Treat it as read-only (pack it with ``training.model_tar.pack_model_tar``).

Helpers: ``build_tiny_dataset(out_dir)`` (the same folder, anywhere) and
``train_subprocess_env(**extra)`` (an environment for ``training.train`` subprocesses with
no inherited SM_/MLFLOW_/LEPTON_/torchrun variables and one torch thread).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CLASSES = [str(i) for i in range(10)]


def build_tiny_dataset(out_dir: Path) -> Path:
    """Write the digits dataset as contract-format shards into ``out_dir``; returns it."""
    from sklearn.datasets import load_digits

    from training.shards import write_dataset

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    # Fixed index-based split (10% test, 10% val): stable and class-balanced enough here.
    bucket = np.arange(len(labels)) % 10
    splits = {
        "train": (images[bucket >= 2], labels[bucket >= 2]),
        "val": (images[bucket == 1], labels[bucket == 1]),
        "test": (images[bucket == 0], labels[bucket == 0]),
    }
    write_dataset(
        out_dir,
        splits,
        TINY_CLASSES,
        dataset="sklearn-digits-8x8",
        shard_size=600,  # several train shards, so multi-shard reading is exercised
        code_version="tests",
        raw_fingerprint="sklearn-load_digits",
        config={"source": "sklearn.datasets.load_digits", "image_size": [8, 8]},
    )
    total = len(labels)
    report = {"total": total, "used": total, "quarantined": [], "warnings": []}
    (out_dir / "quality_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return out_dir


def train_subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for running ``python -m training.train`` in tests: no tracking, 1 thread."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SM_", "MLFLOW_", "LEPTON_"))
        and k
        not in (
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
        )
    }
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A contract-format dataset folder (8x8 digits, 10 classes); treat it as read-only."""
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))


@pytest.fixture(scope="session")
def trained_model_dir(tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model dir (model.onnx, model.pt, metadata.json) trained for a few seconds."""
    root = tmp_path_factory.mktemp("trained")
    model_dir, output_dir, ckpt_dir = root / "model", root / "output", root / "checkpoints"
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        "--setup",
        "tiny",
        "--dataset",
        str(tiny_dataset_dir),
        "--model-dir",
        str(model_dir),
        "--output-data-dir",
        str(output_dir),
        "--checkpoint-dir",
        str(ckpt_dir),
        "--no-tracking",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=train_subprocess_env(), capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    for name in ("model.onnx", "model.pt", "metadata.json"):
        assert (model_dir / name).is_file(), f"{name} missing from {model_dir}"
    return model_dir
