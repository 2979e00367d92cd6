"""Streaming a split from its shards: each rank reads only its share, decoding in DataLoader
workers, with a deterministic order and exact mid-epoch resume.

One epoch's order: the split's shards in a seeded per-epoch permutation, read as one stream
of N samples. Rank r takes the contiguous stretch ``[r*R, (r+1)*R)`` of it, R = ceil(N /
world) (the end wraps around to the start, as DistributedSampler pads), so every rank yields
the same number of batches and reads about 1/world of the shards. A rank's B batches are cut
into contiguous blocks, one per worker, so each worker reads its own few shards; each worker
shuffles its samples through a bounded buffer (seeded by run seed, epoch, rank and worker)
and decodes only what it emits. The DataLoader takes batches from the workers in turn.

Memory per worker: one shard's bytes while it is read, plus ``shuffle_buffer`` encoded
samples, plus one decoded batch: bounded by the buffer and worker count, not by the data set.

Resume: the loader's state is (epoch, batches yielded), as for in-memory data. Given it, every
worker works out how many batches of each block the DataLoader had taken (the round-robin
order is fixed) and which block was due next; worker i of the new DataLoader takes the block
i places after that one and skips what was taken: it reads and shuffles as before but decodes
nothing it skips, so the resumed run sees exactly the batches the uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data.dataloader import _InfiniteConstantSampler

from training.shards import (
    Decoder,
    is_s3,
    read_shard,
    s3_filesystem,
    shard_samples,
    split_shards,
)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class StreamSpec:
    """What one rank streams."""

    dataset_dir: str
    manifest: Mapping[str, Any]
    split: str
    batch_size: int  # samples per batch (per process)
    shuffle: bool  # shard order and buffer shuffling (train); False keeps the stored order
    seed: int
    shuffle_buffer: int  # encoded samples held per worker for shuffling
    world_size: int = 1
    rank: int = 0
    workers: int = 0  # DataLoader workers (0: read and decode in this process)
    verify: bool = True  # check each shard's sha256 before using it
    max_held_bytes: int = 0  # per worker: shard + buffered bytes may never exceed this (0: any)


def held_bound(manifest: Mapping[str, Any], split: str, shuffle_buffer: int) -> int:
    """The most bytes one stream worker holds: its largest shard (read whole to verify it)
    plus a full buffer of the split's largest average-size samples, plus decoded batches are
    not counted (a batch is the caller's choice)."""
    entries = split_shards(manifest, split)
    if not entries:
        return 0
    biggest = max(int(e.get("bytes", 0)) for e in entries)
    per_sample = max(int(e.get("bytes", 0)) // max(1, int(e["count"])) for e in entries)
    return biggest + shuffle_buffer * per_sample


class _Held:
    """What one worker holds right now, checked against its limit on every change."""

    def __init__(self, limit: int) -> None:
        self.limit, self.shard, self.buffer = limit, 0, 0

    def add(self, shard: int = 0, buffer: int = 0) -> None:
        self.shard += shard
        self.buffer += buffer
        now = self.shard + self.buffer
        if self.limit and now > self.limit:
            raise MemoryError(
                f"stream worker would hold {now} bytes (shard {self.shard}, buffer "
                f"{self.buffer}), over its budget of {self.limit}"
            )


def worker_batches(total_batches: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) batch block of each worker: contiguous, sizes differ by at most one."""
    n = max(1, workers)
    return [(w * total_batches // n, (w + 1) * total_batches // n) for w in range(n)]


def taken_per_worker(blocks: list[tuple[int, int]], taken: int) -> tuple[list[int], int]:
    """How many batches of each worker the DataLoader had yielded after ``taken`` batches (it
    asks the workers in turn, passing over those that have run out), and the worker it would
    ask next."""
    left = [stop - start for start, stop in blocks]
    got, turn = [0] * len(blocks), 0
    while taken > 0 and any(left):
        if left[turn]:
            left[turn] -= 1
            got[turn] += 1
            taken -= 1
        turn = (turn + 1) % len(blocks)
    return got, turn


def epoch_seed(*parts: int) -> np.random.Generator:
    return np.random.default_rng([abs(int(p)) for p in parts])


class ShardStream(IterableDataset[Batch]):
    """The batches of one rank over one epoch (see the module docstring). Set ``epoch`` (and
    ``skip_batches`` to resume) before a DataLoader iterates it."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.entries = split_shards(spec.manifest, spec.split)
        self.counts = np.array([int(e["count"]) for e in self.entries], dtype=np.int64)
        self.total = int(self.counts.sum())
        self.per_rank = math.ceil(self.total / spec.world_size) if self.total else 0
        self.epoch = 0
        self.skip_batches = 0

    def __len__(self) -> int:
        """Batches per rank per epoch."""
        return math.ceil(self.per_rank / self.spec.batch_size)

    def shard_order(self, epoch: int) -> np.ndarray:
        if not self.spec.shuffle:
            return np.arange(len(self.entries))
        return epoch_seed(self.spec.seed, epoch, 0x5EED).permutation(len(self.entries))

    def pieces(self, epoch: int, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(shard index, first, end) sample ranges covering rank-local positions
        ``[start, stop)`` of this rank's stretch of the epoch's stream, in order."""
        order = self.shard_order(epoch)
        bounds = np.concatenate([[0], np.cumsum(self.counts[order])])
        out: list[tuple[int, int, int]] = []
        pos = self.spec.rank * self.per_rank + start
        end = self.spec.rank * self.per_rank + stop
        while pos < end:
            g = pos % self.total
            k = int(np.searchsorted(bounds, g, side="right")) - 1
            take = min(int(bounds[k + 1]) - g, end - pos)
            first = g - int(bounds[k])
            out.append((int(order[k]), first, first + take))
            pos += take
        return out

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # read now: a DataLoader may reset skip_batches before this generator starts
        return self._batches(self.epoch, self.skip_batches, worker, workers)

    def _batches(self, epoch: int, skip: int, slot: int, workers: int) -> Iterator[Batch]:
        spec = self.spec
        blocks = worker_batches(len(self), workers)
        taken, turn = taken_per_worker(blocks, skip)
        # a fresh DataLoader asks its worker 0 first: it plays the block that was due next
        worker = (turn + slot) % workers
        first_batch, end_batch = blocks[worker]
        skip_mine = taken[worker]
        start = first_batch * spec.batch_size
        stop = min(end_batch * spec.batch_size, self.per_rank)
        if start >= stop:
            return
        decode = Decoder(spec.manifest)
        held = _Held(spec.max_held_bytes)
        samples = self._shuffled(epoch, worker, self.pieces(epoch, start, stop), held)
        skip_samples = skip_mine * spec.batch_size
        images: list[np.ndarray] = []
        labels: list[int] = []
        for i, (sample, shard) in enumerate(samples):
            if i < skip_samples:
                continue
            images.append(decode(sample, shard))
            labels.append(sample.label)
            if len(images) == spec.batch_size:
                yield _to_batch(images, labels)
                images, labels = [], []
        if images:
            yield _to_batch(images, labels)

    def _samples(
        self, pieces: list[tuple[int, int, int]], held: _Held
    ) -> Iterator[tuple[Any, str]]:
        """(sample, shard name) of each piece in order; each shard read and verified whole."""
        fs = s3_filesystem() if is_s3(self.spec.dataset_dir) and pieces else None
        for index, first, end in pieces:
            entry = self.entries[index]
            data = read_shard(self.spec.dataset_dir, entry, fs, self.spec.verify)
            held.add(shard=len(data))
            name = entry["file"]
            for j, sample in enumerate(shard_samples(data, entry, self.spec.verify)):
                if first <= j < end:
                    yield sample, name
            held.add(shard=-len(data))
            del data

    def _shuffled(
        self, epoch: int, worker: int, pieces: list[tuple[int, int, int]], held: _Held
    ) -> Iterator[tuple[Any, str]]:
        stream = self._samples(pieces, held)
        size = self.spec.shuffle_buffer if self.spec.shuffle else 0
        if size <= 1:
            yield from stream
            return
        rng = epoch_seed(self.spec.seed, epoch, self.spec.rank, worker)
        buffer: list[tuple[Any, str]] = []
        picks: list[int] = []  # random slots, drawn a few thousand at a time
        for item in stream:
            held.add(buffer=len(item[0].image))
            if len(buffer) < size:
                buffer.append(item)
                continue
            if not picks:
                picks = rng.integers(size, size=4096).tolist()[::-1]
            j = picks.pop()
            out, buffer[j] = buffer[j], item
            held.add(buffer=-len(out[0].image))
            yield out
        for j in rng.permutation(len(buffer)):
            held.add(buffer=-len(buffer[int(j)][0].image))
            yield buffer[int(j)]


def _to_batch(images: list[np.ndarray], labels: list[int]) -> Batch:
    # NHWC bytes viewed as NCHW = channels_last layout, no copy (as the in-memory path)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return x, torch.tensor(labels, dtype=torch.int64)


class _EpochSampler(_InfiniteConstantSampler):
    """The DataLoader's placeholder sampler for iterable datasets, given ``set_epoch`` so that
    Lightning's per-epoch call reaches the stream."""

    def __init__(self, stream: ShardStream) -> None:
        super().__init__()
        self.stream = stream

    def set_epoch(self, epoch: int) -> None:
        self.stream.epoch = int(epoch)


class LoaderPosition:
    """A loader's place in its epoch for Lightning's checkpoint (``state_dict`` /
    ``load_state_dict``, Lightning's _Stateful): the epoch and the batches yielded in it. A
    saved place is applied once, to the next iteration of that epoch."""

    _yielded = 0
    _resume: tuple[int, int] | None = None

    def current_epoch(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def take_resume(self) -> int:
        """Batches of this epoch to skip (0 unless a saved place is due now)."""
        skip = 0
        if self._resume is not None and self._resume[0] == self.current_epoch():
            skip = self._resume[1]
        self._resume = None
        self._yielded = skip
        return skip

    def counted(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for batch in batches:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.current_epoch()), "batches": int(self._yielded)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if 0 < int(state.get("batches", 0)) < len(self):
            self._resume = (int(state["epoch"]), int(state["batches"]))


class StreamLoader(LoaderPosition, DataLoader[Batch]):
    """DataLoader over a ShardStream that keeps its place (the same state as
    training.data.ResumableLoader). Workers are started anew each epoch, so they see the
    epoch and the resume position."""

    dataset: ShardStream

    def __init__(self, stream: ShardStream, **kwargs: Any) -> None:
        workers = int(kwargs.pop("num_workers", stream.spec.workers))
        super().__init__(
            stream,
            batch_size=None,
            collate_fn=_pass_through,
            num_workers=workers,
            persistent_workers=False,
            **kwargs,
        )
        object.__setattr__(self, "sampler", _EpochSampler(stream))  # DataLoader forbids setattr

    def current_epoch(self) -> int:
        return self.dataset.epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        self.dataset.skip_batches = self.take_resume()
        try:
            batches = super().__iter__()  # workers fork here, with this epoch and skip
        finally:
            self.dataset.skip_batches = 0
        yield from self.counted(batches)  # a generator: nothing runs before the first batch


def _pass_through(batch: Any) -> Any:
    """collate_fn for datasets that yield collated batches (this stream, and training.data's
    ``__getitems__``)."""
    return batch
