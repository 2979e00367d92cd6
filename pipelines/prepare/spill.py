"""The decode pass (a process pool over chunks), a first run's listing completed from its
content hashes, and random access to its spill files."""

from __future__ import annotations

import math
import mmap
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pipelines.prepare.decode import (
    ChunkResult,
    DecodeSpec,
    decode_chunk,
    ends_path,
    init_worker,
    spill_path,
)
from pipelines.prepare.items import Listing, RawItem
from pipelines.prepare.local_listing import listed_item


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
    t0 = last = time.perf_counter()
    done = bad = 0
    results: list[ChunkResult] = []

    def note(result: ChunkResult) -> None:
        nonlocal done, bad, last
        results.append(result)
        done += len(result.rows)
        bad += len(result.rejected)
        now = time.perf_counter()
        if now - last >= 2.0 or done == len(entries):
            last = now
            log(
                f"decoded {done}/{len(entries)} ({100 * done // max(1, len(entries))}%), "
                f"{bad} rejected, {done / max(now - t0, 1e-9):.0f} images/s"
            )

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
    """Random access to spilled encoded images, a bounded number of files mapped at once
    (mapped pages count as resident memory). Slices of a plain `mmap` with the end offsets as
    Python ints: a numpy memmap's slicing costs ~20 us an image, a third of the writing. Images
    are copied into the shard's buffer, so a map dropped from `open` (or with the reader) is
    unmapped at once."""

    def __init__(self, work_dir: str, max_open: int = 16) -> None:
        self.work_dir, self.max_open = work_dir, max_open
        self.open: dict[int, tuple[mmap.mmap, list[int]]] = {}

    def copy_into(
        self,
        out: bytearray,
        offsets: np.ndarray,
        sizes: np.ndarray,
        chunks: np.ndarray,
        rows: np.ndarray,
    ) -> None:
        """Copy encoded image i (row rows[i] of spill file chunks[i]) into its slot of
        sizes[i] bytes at out[offsets[i]:], file by file. A spilled image of another length
        (a damaged scratch file) is a ValueError, never a shard with a misplaced member."""
        order = np.lexsort((rows, chunks))
        bounds = np.flatnonzero(np.diff(chunks[order])) + 1
        with memoryview(out) as target:
            for group in np.split(order, bounds) if len(order) else []:
                data, ends = self._map(int(chunks[group[0]]))
                at_size_row = (offsets[group].tolist(), sizes[group].tolist(), rows[group].tolist())
                with memoryview(data) as source:
                    for at, size, row in zip(*at_size_row, strict=True):
                        start = ends[row - 1] if row else 0
                        if ends[row] - start != size:
                            path = spill_path(self.work_dir, int(chunks[group[0]]))
                            raise ValueError(
                                f"{path}: image {row} is {ends[row] - start} bytes, the decode "
                                f"pass recorded {size} (a damaged scratch file)"
                            )
                        target[at : at + size] = source[start : ends[row]]

    def _map(self, chunk: int) -> tuple[mmap.mmap, list[int]]:
        if chunk not in self.open:
            if len(self.open) >= self.max_open:
                self.open.pop(next(iter(self.open)))
            ends = np.load(ends_path(self.work_dir, chunk), allow_pickle=False).tolist()
            with open(spill_path(self.work_dir, chunk), "rb") as fh:
                data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self.open[chunk] = (data, ends)
        return self.open[chunk]
