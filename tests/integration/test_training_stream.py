"""Training on more data than its memory budget: the loader streams the shards, never holds
more than the budget, and reaches the in-memory run's result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_training_run import _args, _report
from training.shards import write_dataset
from training.train import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("SM_", "MLFLOW_", "LEPTON_")) or key in ("RANK", "WORLD_SIZE"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def digits_32px(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """sklearn's digits at 32x32 RGB (5.5 MB decoded) in 18 train shards; (folder, bytes)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = np.repeat(np.kron(small, np.ones((4, 4), np.uint8))[..., None], 3, axis=3)
    labels = digits.target.astype(np.int64)
    bucket = np.arange(len(labels)) % 10
    out = tmp_path_factory.mktemp("digits32")
    write_dataset(
        out,
        {
            "train": (images[bucket >= 2], labels[bucket >= 2]),
            "val": (images[bucket == 1], labels[bucket == 1]),
            "test": (images[bucket == 0], labels[bucket == 0]),
        },
        [str(i) for i in range(10)],
        dataset="digits-32",
        shard_size=80,
    )
    return out, int(images.nbytes)


def _train(dataset: Path, root: Path, *extra: str) -> dict:
    assert (
        main(_args(dataset, root, "--setup", "tiny", "--epochs", "3", "--no-tracking", *extra)) == 0
    )
    return _report(root)


def test_training_under_a_third_of_the_decoded_size_matches_in_memory(
    digits_32px: tuple[Path, int], tmp_path: Path
) -> None:
    dataset, decoded = digits_32px
    in_memory = _train(dataset, tmp_path / "memory")
    budget = decoded // 3
    streamed = _train(
        dataset,
        tmp_path / "stream",
        "--data-in-memory-max-bytes",
        str(budget),
        "--stream-workers",
        "2",
    )
    assert not in_memory["data"]["streamed"] and streamed["data"]["streamed"]
    # every worker's shard + buffer bytes are checked against its share of the budget
    assert 2 * streamed["data"]["stream_worker_max_bytes"] <= budget
    assert streamed["steps_per_epoch"] == in_memory["steps_per_epoch"]
    for report in (in_memory, streamed):
        assert report["metrics"]["test_accuracy"] > 0.85
    gap = abs(streamed["metrics"]["test_accuracy"] - in_memory["metrics"]["test_accuracy"])
    assert gap < 0.05, (streamed["metrics"], in_memory["metrics"])
