"""The decode side of prepare, run in worker processes.

A task is a chunk of listed items. The worker reads each item (checking it is what was listed),
hashes its bytes, decodes and resizes it with `inference.preprocess` (the single definition of
preprocessing), encodes what the dataset stores (PNG by default, training.wds; a bare PNG that
needs no conversion is stored as it is) and writes the chunk's encoded images to one spill file
``chunk-NNNNNN.bin`` in the scratch folder. It returns only small per-item metadata, so the
main process holds shard bytes only while it writes shards.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.png import is_bare
from inference.preprocess import ImageRejected, decode, decoded_size, to_array
from pipelines.prepare.items import RawItem
from pipelines.prepare.reading import (
    ObjectChanged,
    TooLarge,
    checked_sha256,
    make_client,
    read_item,
)
from pipelines.settings import Settings
from training.wds import encode_image


@dataclass(frozen=True)
class DecodeSpec:
    image_size: tuple[int, int]  # (height, width) pixels
    channels: int
    max_pixels: int
    min_side: int
    work_dir: str  # where spill files go
    settings: Settings | None  # S3 access for s3:// items; None -> default chain
    encoding: str = "png"  # what is stored: png | webp (lossless) | jpeg (at jpeg_quality)
    jpeg_quality: int = 90
    keep_original_size: bool = False  # store each image at its own size (stats: resized)
    max_file_bytes: int | None = None  # checked here for files listed without a size


@dataclass
class ChunkResult:
    """What a worker reports for one chunk: per-item arrays (no pixels), ~100 bytes an image."""

    chunk: int  # spill file number
    positions: np.ndarray  # int64 [n]: index of each item in the listing
    sha256: np.ndarray  # uint8 [n, 32]: hash of the raw bytes (zeros when unread)
    read_sizes: np.ndarray  # int64 [n]: raw bytes read (-1 when unread)
    rows: np.ndarray  # int64 [n]: row in the spill file, -1 when rejected
    sizes: np.ndarray  # int64 [n]: encoded bytes stored (0 when rejected)
    channel_sums: np.ndarray  # int64 [n, C]: per channel, sum of uint8 values (exact)
    channel_sumsqs: np.ndarray  # int64 [n, C]: per channel, sum of squared values (exact)
    rejected: dict[int, tuple[str, str]]  # listing index -> (reason, detail)


# 8 threads: under botocore's default pool of 10 connections per client.
READ_THREADS = 8
READ_WINDOW = 32  # files in flight per worker: memory <= READ_WINDOW * max_file_bytes

# Why a file gave no bytes to hash: it vanished or changed after listing, or reading failed.
CHANGED, UNREADABLE = "changed", "unreadable"

_spec: DecodeSpec | None = None
_client: Any = None


def init_worker(spec: DecodeSpec) -> None:
    global _spec, _client
    _spec = spec
    _client = None  # made on first s3:// item, in this process (clients do not survive fork)


def spill_path(work_dir: str, chunk: int) -> str:
    """The chunk's encoded images, back to back, in row order."""
    return os.path.join(work_dir, f"chunk-{chunk:06d}.bin")


def _client_for(spec: DecodeSpec) -> Any:
    global _client
    if _client is None:
        _client = make_client(spec.settings)
    return _client


def decode_one(data: bytes, spec: DecodeSpec) -> tuple[np.ndarray, bytes]:
    """Bytes -> (uint8 [H, W, C] at the dataset's image size, the encoded image to store) per
    the preprocessing policy; raises ImageRejected. A bare PNG (`inference.png.is_bare`) that
    needs no conversion is stored as it is: re-encoding it would give the same pixels at ~20-40
    us an image, as much as reading and decoding it."""
    decoded = decode(data, spec.max_pixels, spec.min_side)
    try:
        pixels = to_array(decoded, spec.image_size, spec.channels)
        stored = pixels
        own_size = decoded_size(decoded)
        if spec.keep_original_size and own_size != spec.image_size:
            stored = to_array(decoded, own_size, spec.channels)
        # `to_array` returns libspng's pixels themselves when nothing needs converting
        if stored is decoded and spec.encoding == "png" and is_bare(data):
            return pixels, data  # libspng decoded it, every CRC checked: valid as stored
        return pixels, encode_image(stored, spec.encoding, spec.jpeg_quality)
    except MemoryError:
        raise ImageRejected("too_large", "not enough memory to convert") from None
    finally:
        if not isinstance(decoded, np.ndarray):
            decoded.close()


def _read_one(
    entry: tuple[int, RawItem], client: Any, max_bytes: int | None
) -> tuple[int, bytes | Exception]:
    index, item = entry
    try:
        s3 = item.location.startswith("s3://")
        return index, read_item(item, client if s3 else None, max_bytes)
    except (ObjectChanged, OSError) as exc:
        return index, exc


def _read_all(
    entries: list[tuple[int, RawItem]], spec: DecodeSpec
) -> Iterator[tuple[int, bytes | Exception]]:
    """Items' bytes in order. S3 reads overlap (a few ms of latency each would otherwise
    dominate small images); at most READ_WINDOW files are held at once."""
    if not any(item.location.startswith("s3://") for _, item in entries):
        for entry in entries:
            yield _read_one(entry, None, spec.max_file_bytes)
        return
    client = _client_for(spec)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for start in range(0, len(entries), READ_WINDOW):
            window = entries[start : start + READ_WINDOW]
            yield from pool.map(lambda e: _read_one(e, client, spec.max_file_bytes), window)


def decode_chunk(task: tuple[int, list[tuple[int, RawItem]]]) -> ChunkResult:
    """Decode one chunk of items and spill its accepted pixels; returns per-item metadata."""
    chunk, entries = task
    spec = _spec
    if spec is None:
        raise RuntimeError("init_worker was not called in this process")
    n, n_chan = len(entries), spec.channels
    result = ChunkResult(
        chunk=chunk,
        positions=np.array([index for index, _ in entries], dtype=np.int64),
        sha256=np.zeros((n, 32), dtype=np.uint8),
        read_sizes=np.full(n, -1, dtype=np.int64),
        rows=np.full(n, -1, dtype=np.int64),
        sizes=np.zeros(n, dtype=np.int64),
        channel_sums=np.zeros((n, n_chan), dtype=np.int64),
        channel_sumsqs=np.zeros((n, n_chan), dtype=np.int64),
        rejected={},
    )
    arrays: list[np.ndarray] = []
    encoded: list[bytes] = []
    for i, (index, data) in enumerate(_read_all(entries, spec)):
        if isinstance(data, TooLarge):
            result.rejected[index] = ("too_large", str(data))
            continue
        if isinstance(data, Exception):
            reason = CHANGED if isinstance(data, ObjectChanged) else UNREADABLE
            result.rejected[index] = (reason, str(data))
            continue
        result.read_sizes[i] = len(data)
        digest = checked_sha256(entries[i][1]) or hashlib.sha256(data).digest()
        result.sha256[i] = np.frombuffer(digest, dtype=np.uint8)
        try:
            pixels, stored = decode_one(data, spec)
        except ImageRejected as exc:
            result.rejected[index] = (exc.reason, exc.detail)
            continue
        result.rows[i] = len(arrays)
        arrays.append(pixels)
        encoded.append(stored)
        result.sizes[i] = len(encoded[-1])
    if arrays:
        stack = np.stack(arrays)
        del arrays
        _channel_stats(stack, result)
        write_spill(spec.work_dir, chunk, encoded)
    return result


def write_spill(work_dir: str, chunk: int, encoded: list[bytes]) -> None:
    """One chunk's encoded images, back to back (a temp name, then renamed): where each one
    lies follows from the sizes the chunk's result records."""
    path = spill_path(work_dir, chunk)
    with open(path + ".tmp", "wb") as fh:
        fh.write(b"".join(encoded))
    os.replace(path + ".tmp", path)


def _channel_stats(stack: np.ndarray, result: ChunkResult, batch_bytes: int = 8 * 2**20) -> None:
    """Exact per-image, per-channel sums and sums of squares, a few images per numpy call
    (per-image calls cost more than decoding a 28x28 PNG). Channels are made contiguous and
    widened to uint16 in one copy, where a square (at most 255**2) still fits, squared in
    place, and summed into uint64: 28 -> 7 us a 32x32 RGB image, 1.4 -> 0.45 ms at 224 px,
    against squares looked up in a table (the same sums, tested)."""
    n, n_chan = len(stack), stack.shape[-1]
    where = np.flatnonzero(result.rows >= 0)  # result rows in spill order
    step = max(1, batch_bytes // (2 * stack[0].size))
    for start in range(0, n, step):
        x = stack[start : start + step].reshape(min(step, n - start), -1, n_chan)
        wide = x.transpose(0, 2, 1).astype(np.uint16, order="C")  # [images, C, pixels]
        result.channel_sums[where[start : start + step]] = wide.sum(axis=2, dtype=np.uint64)
        np.multiply(wide, wide, out=wide)
        result.channel_sumsqs[where[start : start + step]] = wide.sum(axis=2, dtype=np.uint64)
