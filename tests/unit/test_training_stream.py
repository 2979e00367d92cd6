"""training/stream.py: per-rank shares, deterministic order, exact mid-epoch resume, bad shards."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from training.shards import DatasetError, read_manifest, write_dataset
from training.stream import ShardStream, StreamLoader, StreamSpec, taken_per_worker, worker_batches


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """203 train images of 4x4 RGB in 7 shards; each image's first pixel encodes its index."""
    out = tmp_path_factory.mktemp("stream")
    n = 203
    images = np.random.default_rng(0).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    labels = (np.arange(n) % 3).astype(np.int64)
    empty = (images[:0], labels[:0])
    write_dataset(
        out,
        {"train": (images, labels), "val": (images[:20], labels[:20]), "test": empty},
        ["a", "b", "c"],
        dataset="stream-test",
        shard_size=30,
    )
    return out


def _ids(x: object) -> list[int]:
    arr = np.asarray(x)
    return (arr[:, 0, 0, 0].astype(int) + 256 * arr[:, 1, 0, 0].astype(int)).tolist()


def _loader(ds: Path, *, world: int = 1, rank: int = 0, workers: int = 0) -> StreamLoader:
    spec = StreamSpec(
        str(ds),
        read_manifest(ds),
        "train",
        batch_size=8,
        shuffle=True,
        seed=3,
        shuffle_buffer=16,
        world_size=world,
        rank=rank,
        workers=workers,
    )
    return StreamLoader(ShardStream(spec))


def _epoch(loader: StreamLoader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]  # as Lightning does
    return [_ids(x) for x, _ in loader]


def test_round_robin_bookkeeping() -> None:
    blocks = worker_batches(10, 3)
    assert blocks == [(0, 3), (3, 6), (6, 10)]
    assert taken_per_worker(blocks, 0) == ([0, 0, 0], 0)
    assert taken_per_worker(blocks, 7) == ([3, 2, 2], 1)
    assert taken_per_worker(blocks, 9) == ([3, 3, 3], 0)
    assert taken_per_worker(blocks, 10) == ([3, 3, 4], 0)


def test_ranks_read_disjoint_shares_covering_the_epoch(small_set: Path) -> None:
    seen = []
    for rank in range(2):
        loader = _loader(small_set, world=2, rank=rank)
        batches = _epoch(loader, 1)
        assert len(batches) == len(loader) == 13  # ceil(ceil(203 / 2) / 8), same on each rank
        seen.append([i for b in batches for i in b])
        stream = loader.dataset
        shards = {k for k, _, _ in stream.pieces(1, 0, stream.per_rank)}
        assert len(shards) <= 5  # about half of the 7 shards, not all of them
    assert len(seen[0]) == len(seen[1]) == 102
    assert set(seen[0]) | set(seen[1]) == set(range(203))  # one padding repeat across ranks
    assert len(set(seen[0]) & set(seen[1])) == 1
    assert _epoch(_loader(small_set, world=2), 1) == _epoch(_loader(small_set, world=2), 1)
    assert _epoch(_loader(small_set), 1) != _epoch(_loader(small_set), 2)  # reshuffled


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(
    small_set: Path, workers: int
) -> None:
    full = _epoch(_loader(small_set, workers=workers), 4)
    assert sorted(i for b in full for i in b) == list(range(203))
    interrupted = _loader(small_set, workers=workers)
    interrupted.sampler.set_epoch(4)  # type: ignore[attr-defined]
    it = iter(interrupted)
    for _ in range(5):
        next(it)
    state = interrupted.state_dict()
    assert state == {"epoch": 4, "batches": 5}
    del it
    for taken in (5, 11, len(full) - 1):  # before and after a worker has run out
        resumed = _loader(small_set, workers=workers)
        resumed.load_state_dict({"epoch": 4, "batches": taken})
        assert _epoch(resumed, 4) == full[taken:]
    assert len(_epoch(resumed, 5)) == len(full)  # the skip applies to that epoch only


def test_tampered_or_truncated_shard_is_an_error_naming_it(small_set: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(small_set, copy)
    shard = copy / "train-00003.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # inside the first image
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"train-00003\.tar sha256 mismatch"):
        _epoch(_loader(copy), 0)
    shard.write_bytes(bytes(data[:2000]))  # cut short
    with pytest.raises(DatasetError, match=r"train-00003\.tar sha256 mismatch"):
        _epoch(_loader(copy, workers=2), 0)
    spec = StreamSpec(str(copy), read_manifest(copy), "train", 8, True, 3, 16, verify=False)
    with pytest.raises(DatasetError, match=r"shard train-00003\.tar is malformed: truncated"):
        list(StreamLoader(ShardStream(spec)))
