"""The decode pass (a process pool over chunks), a first run's listing completed from its
content hashes, and random access to its spill files."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pipelines.prepare.decode import (
    ChunkResult,
    DecodeSpec,
    decode_chunk,
    init_worker,
    spill_path,
)
from pipelines.prepare.items import Listing, RawItem
from pipelines.prepare.local_listing import listed_item
from pipelines.progress import Progress


@dataclass
class DecodedSet:
    """Every decode result, concatenated in listing order (index i = i-th decoded item)."""

    positions: np.ndarray  # int64 [N] index in the listing, increasing
    sha256: np.ndarray  # uint8 [N, 32]
    read_sizes: np.ndarray  # int64 [N] raw bytes read, -1 when unread
    chunks: np.ndarray  # int64 [N] spill file
    rows: np.ndarray  # int64 [N] row in the spill file, -1 when rejected
    sizes: np.ndarray  # int64 [N] encoded bytes stored (0 when rejected)
    channel_sums: np.ndarray  # int64 [N, C]
    channel_sumsqs: np.ndarray  # int64 [N, C]
    rejected: dict[int, tuple[str, str]]  # listing index -> (reason, detail)

    @classmethod
    def concat(cls, results: list[ChunkResult], channels: int) -> DecodedSet:
        rejected: dict[int, tuple[str, str]] = {}
        for r in results:
            rejected.update(r.rejected)
        if not results:
            z = np.zeros(0, np.int64)
            return cls(
                z,
                np.zeros((0, 32), np.uint8),
                z,
                z,
                z,
                z,
                np.zeros((0, channels), np.int64),
                np.zeros((0, channels), np.int64),
                rejected,
            )
        out = cls(
            positions=np.concatenate([r.positions for r in results]),
            sha256=np.concatenate([r.sha256 for r in results]),
            read_sizes=np.concatenate([r.read_sizes for r in results]),
            chunks=np.concatenate([np.full(len(r.rows), r.chunk, np.int64) for r in results]),
            rows=np.concatenate([r.rows for r in results]),
            sizes=np.concatenate([r.sizes for r in results]),
            channel_sums=np.concatenate([r.channel_sums for r in results]),
            channel_sumsqs=np.concatenate([r.channel_sumsqs for r in results]),
            rejected=rejected,
        )
        assert np.all(np.diff(out.positions) > 0), "decode results must come back in order"
        return out


def _chunks(
    entries: list[tuple[int, RawItem]], size: int
) -> Iterator[tuple[int, list[tuple[int, RawItem]]]]:
    for start in range(0, len(entries), size):
        yield start // size, entries[start : start + size]


def run_decode_pass(
    entries: list[tuple[int, RawItem]],
    spec: DecodeSpec,
    workers: int,
    chunk_size: int,
    log: Callable[[str], None],
) -> tuple[DecodedSet, float]:
    """Decode `entries` (listing index, item) on `workers` processes (0 = every core).

    Returns the results and the pass's throughput in images per second.
    """
    n_chunks = math.ceil(len(entries) / chunk_size)
    workers = max(1, min(workers or os.cpu_count() or 1, n_chunks))
    t0 = time.perf_counter()
    done = bad = 0
    results: list[ChunkResult] = []
    progress = Progress(log, "decoded", len(entries), "images")

    def note(result: ChunkResult) -> None:
        nonlocal done, bad
        results.append(result)
        done += len(result.rows)
        bad += len(result.rejected)
        progress.update(done, f", {bad} rejected")

    if workers == 1:
        init_worker(spec)
        for task in _chunks(entries, chunk_size):
            note(decode_chunk(task))
    else:
        # fork: workers start in milliseconds and inherit the imported decoder; they build their
        # own S3 clients. Elsewhere (macOS, Windows) the platform default is used.
        method = "fork" if "fork" in mp.get_all_start_methods() else None
        with mp.get_context(method).Pool(workers, init_worker, (spec,)) as pool:
            for result in pool.imap(decode_chunk, _chunks(entries, chunk_size)):
                note(result)
    seconds = time.perf_counter() - t0
    return DecodedSet.concat(results, spec.channels), len(entries) / max(seconds, 1e-9)


def with_read_hashes(listing: Listing, decoded: DecodedSet, block: int = 65536) -> Listing:
    """A local listing made by name only, completed in place with the sizes and hashes the
    decode workers took of the bytes they read: its fingerprint is the one a hashing listing
    of the same files gives (tested). A file no worker read (screened out before decoding,
    too large, unreadable, vanished) is listed again here exactly as a hashing listing lists
    it. Items are replaced one by one (a copy of 1,000,000 of them would be ~200 MB more at
    the peak)."""
    items = listing.items
    done = np.zeros(len(items), dtype=bool)
    positions = decoded.positions.tolist()
    for start in range(0, len(positions), block):
        hexes = decoded.sha256[start : start + block].tobytes().hex()
        sizes = decoded.read_sizes[start : start + block].tolist()
        for j, pos in enumerate(positions[start : start + block]):
            if sizes[j] < 0:
                continue
            it = items[pos]
            etag = "sha256:" + hexes[64 * j : 64 * j + 64]
            items[pos] = RawItem(it.key, it.label, it.location, sizes[j], etag, it.issue)
            done[pos] = True
    real_top = os.path.realpath(os.path.abspath(listing.source))
    for pos in np.flatnonzero(~done).tolist():
        items[pos] = listed_item(real_top, (items[pos].key, items[pos].location))
    return listing


class SpillReader:
    """Encoded images out of the spill files, read with `os.pread` into a shard's buffer.

    Where each image lies comes from the decode records (a chunk's accepted images are back
    to back in row order, of the sizes recorded), so no index file is read: loading one per
    chunk and shard was ~126 us, and a shard draws from every chunk (content-hash order), so
    chunks x shards grows with the square of the data set (82,000 loads at 1,000,000
    images). Nothing is mapped (mapped pages count as resident memory); up to `max_open`
    descriptors stay open (half the soft fd limit: 10,000 spill files, 2,560,000 images at
    the default chunk size, where the limit is 20,000), the rest are opened per shard. A
    spill file of another length than its records (a damaged scratch file) is a ValueError
    naming it, never a shard with a misplaced member. Close it (or use it as a context
    manager)."""

    def __init__(self, work_dir: str, decoded: DecodedSet, max_open: int | None = None) -> None:
        self.work_dir, self.chunks, self.sizes = work_dir, decoded.chunks, decoded.sizes
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        half = 1 << 16 if soft == resource.RLIM_INFINITY else soft // 2  # the rest: all else
        self.max_open = half if max_open is None else max_open
        self.fds: dict[int, int] = {}
        kept = np.flatnonzero(decoded.rows >= 0)
        order = kept[np.lexsort((decoded.rows[kept], decoded.chunks[kept]))]
        sizes, chunks = decoded.sizes[order], decoded.chunks[order]
        opens = np.r_[True, chunks[1:] != chunks[:-1]][: len(order)]  # a file's first image
        first, group = np.flatnonzero(opens), np.cumsum(opens) - 1
        if not np.array_equal(decoded.rows[order], np.arange(len(order)) - first[group]):
            raise ValueError("decode records: a spill file's rows are not 0, 1, 2, ...")
        starts = np.cumsum(sizes) - sizes
        self.start = np.full(len(decoded.rows), -1, dtype=np.int64)
        self.start[order] = starts - starts[first][group]
        totals = np.add.reduceat(sizes, first) if len(order) else sizes
        self.length = dict(zip(chunks[first].tolist(), totals.tolist(), strict=True))

    def copy_into(self, out: bytearray, offsets: np.ndarray, picked: np.ndarray) -> None:
        """Copy decoded image picked[i] into out[offsets[i]:] (its recorded size), file by
        file, each file's in file order."""
        chunks, starts = self.chunks[picked], self.start[picked]
        order = np.lexsort((starts, chunks))
        bounds = np.flatnonzero(np.diff(chunks[order])) + 1
        with memoryview(out) as target:
            for group in np.split(order, bounds) if len(order) else []:
                chunk = int(chunks[group[0]])
                fd = self._open(chunk)
                try:
                    spans = (offsets[group], starts[group], self.sizes[picked[group]])
                    for at, start, size in zip(*(s.tolist() for s in spans), strict=True):
                        # whole, as the file's length was checked when it was opened
                        target[at : at + size] = os.pread(fd, size, start)
                finally:
                    if chunk not in self.fds:
                        os.close(fd)

    def _open(self, chunk: int) -> int:
        if chunk in self.fds:
            return self.fds[chunk]
        path = spill_path(self.work_dir, chunk)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if (size := os.fstat(fd).st_size) != self.length[chunk]:
            os.close(fd)
            raise ValueError(
                f"{path}: {size} bytes, the decode pass recorded {self.length[chunk]} "
                "(a damaged scratch file)"
            )
        if len(self.fds) < self.max_open:
            self.fds[chunk] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> SpillReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
