"""LightningDataModule over the prepare step's shards (local folder or ``s3://``).

Two ways to feed a split, chosen by its decoded size against ``data_in_memory_max_bytes``:

- **In memory** (small data, e.g. mnist-5k: 3.9 MB): the split is decoded once and held as
  uint8 NHWC; batches are gathered with one fancy-index per batch (``__getitems__``). Every
  split uses a :class:`ResumableSampler` (a DistributedSampler: each rank gets a disjoint
  1/world_size of a seeded per-epoch permutation, padded to equal length).
- **Streamed** (anything larger): training/stream.py. Each rank reads only its share of the
  shards and decodes in DataLoader workers; memory is bounded by the shuffle buffer and the
  worker count, not by the data set.

Either way batches reach the model as uint8 ``[N, C, H, W]`` in channels_last layout,
converted to float on the device, where augmentation runs batched (training/augment.py). The
train loader is *stateful*: it records how many batches of the current epoch it yielded,
which Lightning stores in the checkpoint, so a run stopped mid-epoch resumes on the next
unseen batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from training.shards import is_legacy, load_split, split_count
from training.stream import (
    LoaderPosition,
    ShardStream,
    StreamLoader,
    StreamSpec,
    _pass_through,
    held_bound,
)

Batch = tuple[torch.Tensor, torch.Tensor]


class ArrayDataset(Dataset[Batch]):
    """uint8 images ``[N, H, W, C]`` + int64 labels; batch fetch returns ready tensors."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = np.ascontiguousarray(images)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        # NHWC bytes viewed as NCHW = channels_last layout, no copy
        x = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2)
        return x, torch.from_numpy(self.labels[idx])


class ResumableSampler(DistributedSampler):  # type: ignore[type-arg]
    """DistributedSampler that can skip the first ``n`` of its indices once (mid-epoch resume)."""

    def __init__(
        self, dataset: Dataset[Any], *, num_replicas: int, rank: int, shuffle: bool, seed: int
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.skip_next = 0

    def __iter__(self) -> Iterator[int]:
        skip, self.skip_next = self.skip_next, 0
        indices = list(super().__iter__())
        return iter(indices[skip:])


class ResumableLoader(LoaderPosition, DataLoader[Batch]):
    """Train DataLoader over in-memory data that keeps its place (Lightning's _Stateful)."""

    sampler: ResumableSampler

    def current_epoch(self) -> int:
        return int(self.sampler.epoch)

    def __len__(self) -> int:
        return DataLoader.__len__(self)

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        skip = self.take_resume()
        if skip:
            self.sampler.skip_next = skip * int(self.batch_size or 1)
        yield from self.counted(super().__iter__())  # runs at the first batch, as Lightning expects


class RestoreLoaderPosition(pl.Callback):
    """Applies the train loader state from a checkpoint (Lightning 2.6 restores loop state
    only after it has built the train loader, so its own hand-over never reaches the loader).
    """

    def __init__(self) -> None:
        self._states: list[dict[str, int]] = []

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._states = list(fit_state.get("combined_loader", []))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = trainer.train_dataloader
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        stateful = [dl for dl in loaders if isinstance(dl, LoaderPosition)]
        for loader, state in zip(stateful, self._states, strict=False):
            loader.load_state_dict(state)
        self._states = []


def decoded_bytes(manifest: Mapping[str, Any], splits: Sequence[str]) -> int:
    """Bytes the given splits take decoded (uint8 pixels at the manifest's image size)."""
    h, w = manifest["image_size"]
    return (
        sum(split_count(manifest, s) for s in splits) * int(h) * int(w) * int(manifest["channels"])
    )


class ShardDataModule(pl.LightningDataModule):
    """Train/val/test loaders over one dataset folder; the manifest is read by the caller."""

    def __init__(
        self,
        dataset_dir: str | os.PathLike[str],
        manifest: Mapping[str, Any],
        *,
        per_device_batch_size: int,
        eval_batch_size: int,
        seed: int,
        num_workers: int = 0,
        verify: bool = True,
        in_memory_max_bytes: int = 2**62,
        stream_workers: int = 2,
        shuffle_buffer: int = 2048,
    ) -> None:
        super().__init__()
        self.dataset_dir = os.fspath(dataset_dir)
        self.manifest = manifest
        self.per_device_batch_size = per_device_batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.verify = verify
        self.stream_workers = stream_workers
        self.shuffle_buffer = shuffle_buffer
        # legacy .npz datasets were never meant to stream: they are held in memory as before
        fit_bytes = decoded_bytes(manifest, ("train", "val"))
        self.streaming = not is_legacy(manifest) and fit_bytes > in_memory_max_bytes
        self.budget = in_memory_max_bytes
        if self.streaming:
            self.shuffle_buffer = self._buffer_within_budget()
        self.datasets: dict[str, ArrayDataset] = {}

    def _buffer_within_budget(self) -> int:
        """The shuffle buffer, shrunk if need be so that all stream workers of this process
        together hold at most the in-memory budget; an error if even the shards do not fit."""
        workers = max(1, self.stream_workers)
        per_worker = self.budget // workers
        buffer = self.shuffle_buffer
        while buffer > 1 and held_bound(self.manifest, "train", buffer) > per_worker:
            buffer //= 2
        if held_bound(self.manifest, "train", buffer) > per_worker:
            raise ValueError(
                f"cannot stream {self.dataset_dir} within data_in_memory_max_bytes="
                f"{self.budget} over {workers} worker(s): one shard alone is larger; "
                "re-prepare with a smaller --shard-max-bytes or raise the budget"
            )
        return buffer

    @property
    def max_held_bytes(self) -> int:
        return self.budget // max(1, self.stream_workers) if self.streaming else 0

    def load(self, split: str) -> ArrayDataset:
        """Read (once), decode and return one whole split (held in memory)."""
        if split not in self.datasets:
            images, labels = load_split(
                self.dataset_dir, split, verify=self.verify, manifest=self.manifest
            )
            self.datasets[split] = ArrayDataset(images, labels)
        return self.datasets[split]

    def count(self, split: str) -> int:
        return split_count(self.manifest, split)

    def setup(self, stage: str | None = None) -> None:
        splits = ("train", "val") if stage in (None, "fit") else ("test",)
        if "train" in splits and self.count("train") == 0:
            raise ValueError(f"dataset {self.dataset_dir} has an empty train split")
        if not self.streaming:
            for split in splits:
                self.load(split)

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, split: str, *, train: bool) -> DataLoader[Batch]:
        world, rank = self._replicas()
        batch_size = self.per_device_batch_size if train else self.eval_batch_size
        if self.streaming:
            spec = StreamSpec(
                self.dataset_dir,
                self.manifest,
                split,
                batch_size,
                shuffle=train,
                seed=self.seed,
                shuffle_buffer=self.shuffle_buffer,
                world_size=world,
                rank=rank,
                workers=self.stream_workers,
                verify=self.verify,
                max_held_bytes=self.max_held_bytes,
            )
            return StreamLoader(ShardStream(spec))
        dataset = self.load(split)
        sampler = ResumableSampler(
            dataset, num_replicas=world, rank=rank, shuffle=train, seed=self.seed
        )
        cls = ResumableLoader if train else DataLoader
        return cls(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=_pass_through,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader[Batch]:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader[Batch]:
        split = "val" if self.count("val") else "train"  # no val split: report train fit
        return self._loader(split, train=False)

    def test_dataloader(self) -> DataLoader[Batch]:
        return self._loader("test", train=False)
