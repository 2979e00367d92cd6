"""Dataset shards and manifest (docs/contracts.md "Dataset"): numpy and the tar codec only.

Imported by the prepare step (writer), the training step and the evaluate step (readers), so
it stays light: numpy, hashlib, json, training.wds and (lazily) s3fs for ``s3://`` folders.

A dataset (format_version 2) is WebDataset tar shards of encoded images plus ``manifest.json``
(written last). Shards are written deterministically, so the same samples always produce the
same bytes and sha256: that is what lets the pipeline cache steps and the manifest pin its data.
Every read of a shard checks its sha256 against the manifest before any sample is used, and
its sample count as it is read; a mismatch, a truncated or a malformed shard is a DatasetError
naming it.
Datasets of format_version 1 (``.npz`` of raw pixels) are still read (training.shards_npz).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training import shards_npz, wds
from training.atomic import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2
FORMAT = "webdataset"  # tar shards, <key>.<png|webp|jpg> + <key>.cls per sample
READABLE_VERSIONS = (shards_npz.LEGACY_FORMAT_VERSION, FORMAT_VERSION)
SPLITS = ("train", "val", "test")


class DatasetError(RuntimeError):
    """A dataset folder is missing, malformed, or fails its integrity check."""


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def sample_key(index: int) -> str:
    """The WebDataset key of the ``index``-th sample of a split (unique within the split)."""
    return f"{index:09d}"


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``<split>-<NNNNN>.tar``."""
    return f"{split}-{index:05d}.tar"


def shard_bytes(
    images: np.ndarray, labels: np.ndarray, *, encoding: str = "png", first: int = 0
) -> bytearray:
    """One shard's deterministic tar bytes from uint8 ``[N, H, W, C]`` images and int64
    labels; sample keys count from ``first`` (the shard's offset in its split)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise ValueError(f"labels must be int64 [N], got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    ext = wds.EXTENSIONS[encoding]
    return wds.tar_bytes(
        wds.Sample(sample_key(first + i), ext, wds.encode_image(img, encoding), int(label))
        for i, (img, label) in enumerate(zip(images, labels, strict=True))
    )


def write_shard(
    path: str | os.PathLike[str],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    encoding: str = "png",
    first: int = 0,
) -> str:
    """Write one shard atomically and deterministically; returns its sha256 (hex)."""
    data = shard_bytes(images, labels, encoding=encoding, first=first)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def write_manifest(dataset_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> str:
    """Write ``manifest.json`` (last, atomically, sorted keys); returns its sha256 (hex)."""
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(Path(dataset_dir) / MANIFEST_NAME, data)
    return hashlib.sha256(data).hexdigest()


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale of uint8 ``[N, H, W, C]`` images."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    std = np.maximum(x.std(axis=0), 1e-6)  # a constant channel must not divide by zero
    return [float(v) for v in x.mean(axis=0)], [float(v) for v in std]


def write_dataset(
    dataset_dir: str | os.PathLike[str],
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    classes: Sequence[str],
    *,
    dataset: str,
    shard_size: int = 10_000,
    encoding: str = "png",
    code_version: str = "unknown",
    raw_fingerprint: str = "",
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write already-split arrays as shards plus a manifest; returns the manifest.

    A convenience for tests, benchmarks and simple producers; the prepare step builds its
    manifest itself, following docs/contracts.md.
    """
    out = Path(dataset_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_images = splits["train"][0]
    mean, std = channel_stats(train_images)
    shards: list[dict[str, Any]] = []
    split_info: dict[str, Any] = {}
    for split, (images, labels) in splits.items():
        counts: list[int] = (
            np.bincount(labels, minlength=len(classes)).tolist() if len(labels) else []
        )
        split_info[split] = {
            "count": int(len(labels)),
            "class_counts": {c: int(n) for c, n in zip(classes, counts, strict=False)},
        }
        n_shards = max(1, -(-len(labels) // shard_size))
        for i, idx in enumerate(np.array_split(np.arange(len(labels)), n_shards)):
            name = shard_name(split, i)
            first = int(idx[0]) if len(idx) else 0
            data = shard_bytes(
                images[idx], labels[idx].astype(np.int64), encoding=encoding, first=first
            )
            atomic_write_bytes(out / name, data)
            shards.append(shard_entry(name, split, len(idx), data))
    cfg = dict(config or {})
    size = [int(train_images.shape[1]), int(train_images.shape[2])]
    manifest = {
        **format_fields(encoding, stored_size=size),
        "dataset": dataset,
        "classes": list(classes),
        "image_size": size,
        "channels": int(train_images.shape[3]),
        "mean": mean,
        "std": std,
        "splits": split_info,
        "shards": shards,
        "code_version": code_version,
        "raw_fingerprint": raw_fingerprint,
        "config": cfg,
        "config_sha256": hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest(),
    }
    write_manifest(out, manifest)
    return manifest


def format_fields(encoding: str, stored_size: Sequence[int] | None) -> dict[str, Any]:
    """The manifest's format keys; ``stored_size`` None means images keep their own size."""
    return {
        "format_version": FORMAT_VERSION,
        "format": FORMAT,
        "encoding": encoding,
        "stored_size": list(stored_size) if stored_size is not None else "original",
    }


def shard_entry(name: str, split: str, count: int, data: bytes | bytearray) -> dict[str, Any]:
    """The manifest's record of one written shard."""
    return {
        "file": name,
        "split": split,
        "count": int(count),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


# ---------------------------------------------------------------------------------------------
# Reading (local path or s3:// URI)
# ---------------------------------------------------------------------------------------------
def is_s3(uri: str | os.PathLike[str]) -> bool:
    return os.fspath(uri).startswith("s3://")


def s3_filesystem() -> Any:
    """A fresh s3fs filesystem (default credential chain; honours AWS_ENDPOINT_URL_S3).

    Not fsspec's cached instance: a long-lived process (tests, a notebook) may see the
    endpoint or credentials change between calls.
    """
    import s3fs  # lazy: only remote datasets need it

    return s3fs.S3FileSystem(skip_instance_cache=True)


def read_file(dataset_dir: str | os.PathLike[str], name: str, fs: Any | None = None) -> bytes:
    """The whole of one file of a dataset folder or ``s3://`` prefix (FileNotFoundError)."""
    base = os.fspath(dataset_dir)
    if is_s3(base):
        fs = fs if fs is not None else s3_filesystem()
        key = base.rstrip("/") + "/" + name
        try:
            with fs.open(key, "rb") as fh:
                return bytes(fh.read())
        except FileNotFoundError as exc:
            raise FileNotFoundError(key) from exc
    with open(Path(base) / name, "rb") as fh:
        return fh.read()


def read_manifest_bytes(dataset_dir: str | os.PathLike[str]) -> bytes:
    """Raw bytes of ``manifest.json`` (what ``data_manifest_sha256`` hashes)."""
    try:
        return read_file(dataset_dir, MANIFEST_NAME)
    except FileNotFoundError as exc:
        raise DatasetError(
            f"no {MANIFEST_NAME} in dataset folder {os.fspath(dataset_dir)!r}: not a prepared "
            "dataset (run the prepare step first, or point at its output folder)"
        ) from exc


def manifest_sha256(dataset_dir: str | os.PathLike[str]) -> str:
    """sha256 (hex) of the dataset's ``manifest.json`` bytes."""
    return hashlib.sha256(read_manifest_bytes(dataset_dir)).hexdigest()


def read_manifest(dataset_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and sanity-check ``manifest.json``; raises DatasetError with a clear message."""
    where = os.fspath(dataset_dir)
    raw = read_manifest_bytes(dataset_dir)
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{MANIFEST_NAME} in {where!r} is not JSON: {exc}") from exc
    missing = [
        k
        for k in ("classes", "image_size", "channels", "mean", "std", "shards")
        if k not in manifest
    ]
    if missing:
        raise DatasetError(f"{MANIFEST_NAME} in {where!r} lacks {missing}")
    version = manifest.get("format_version", shards_npz.LEGACY_FORMAT_VERSION)
    if version not in READABLE_VERSIONS:
        raise DatasetError(
            f"unsupported dataset format_version {version} in {where!r} (this code reads "
            f"{list(READABLE_VERSIONS)}): re-prepare the raw data with this code's prepare step "
            "(`lepton data prepare RAW OUT`, or run the pipeline with --no-cache)"
        )
    return manifest


def is_legacy(manifest: Mapping[str, Any]) -> bool:
    """True for a format_version 1 dataset (``.npz`` shards of raw pixels)."""
    return manifest.get("format_version", 1) == shards_npz.LEGACY_FORMAT_VERSION


def split_shards(manifest: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    """The manifest's shard entries of one split, in order."""
    return [s for s in manifest["shards"] if s["split"] == split]


def split_count(manifest: Mapping[str, Any], split: str) -> int:
    return sum(int(s["count"]) for s in split_shards(manifest, split))


def read_shard(
    dataset_dir: str | os.PathLike[str],
    entry: Mapping[str, Any],
    fs: Any | None = None,
    verify: bool = True,
) -> bytes:
    """The bytes of one shard, checked against the manifest entry (sha256 when `verify`)."""
    name = entry["file"]
    try:
        data = read_file(dataset_dir, name, fs)
    except FileNotFoundError as exc:
        raise DatasetError(f"shard {name} listed in the manifest is missing") from exc
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            raise DatasetError(
                f"shard {name} sha256 mismatch: manifest says {entry['sha256']}, file is "
                f"{digest} ({len(data)} bytes); refusing a truncated, corrupted or altered "
                "dataset"
            )
    return data


def shard_samples(
    data: bytes, entry: Mapping[str, Any], verified: bool = False
) -> Iterator[wds.Sample]:
    """The samples of a shard's bytes; DatasetError naming the shard if malformed or short.
    ``verified``: its sha256 was checked, so tar header checksums need not be."""
    name, n = entry["file"], 0
    try:
        for sample in wds.iter_samples(data, checksums=not verified):
            n += 1
            yield sample
    except wds.ShardFormatError as exc:
        raise DatasetError(f"shard {name} is malformed: {exc}") from exc
    if "count" in entry and n != int(entry["count"]):
        raise DatasetError(f"shard {name} holds {n} samples, manifest says {entry['count']}")


class Decoder:
    """Encoded sample -> uint8 ``[H, W, C]`` at the manifest's image size (images stored at
    their own size are resized with the preprocessing policy, ``inference.preprocess``)."""

    def __init__(self, manifest: Mapping[str, Any]) -> None:
        self.size = (int(manifest["image_size"][0]), int(manifest["image_size"][1]))
        self.channels = int(manifest["channels"])

    def __call__(self, sample: wds.Sample, shard: str) -> np.ndarray:
        try:
            pixels = wds.decode_pixels(sample.image, sample.ext, self.channels)
        except ValueError as exc:
            raise DatasetError(f"shard {shard}: sample {sample.key}: {exc}") from exc
        if pixels.shape[:2] == self.size:
            return pixels
        from PIL import Image

        from inference.preprocess import to_array

        img = Image.fromarray(pixels[..., 0] if self.channels == 1 else pixels)
        return to_array(img, self.size, self.channels)


def empty_arrays(manifest: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    h, w = manifest["image_size"]
    return np.zeros((0, h, w, manifest["channels"]), np.uint8), np.zeros((0,), np.int64)


def shard_arrays(
    data: bytes, entry: Mapping[str, Any], manifest: Mapping[str, Any], verified: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of one shard's (verified) bytes, decoded."""
    if is_legacy(manifest):
        try:
            images, labels = shards_npz.load_npz_shard(data)
        except ValueError as exc:
            raise DatasetError(f"shard {entry['file']}: {exc}") from exc
        if "count" in entry and len(labels) != int(entry["count"]):
            raise DatasetError(
                f"shard {entry['file']} holds {len(labels)} samples, manifest says {entry['count']}"
            )
        return images, labels
    decode = Decoder(manifest)
    pixels: list[np.ndarray] = []
    classes: list[int] = []
    for sample in shard_samples(data, entry, verified):
        pixels.append(decode(sample, entry["file"]))
        classes.append(sample.label)
    if not pixels:
        return empty_arrays(manifest)
    return np.stack(pixels), np.asarray(classes, dtype=np.int64)


def load_split(
    dataset_dir: str | os.PathLike[str],
    split: str,
    verify: bool = True,
    manifest: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 ``[N, H, W, C]``, decoded) and labels (int64 ``[N]``) of one split.

    With ``verify`` each shard's sha256 must equal the manifest's, else DatasetError names
    the shard. An empty split returns zero-length arrays of the manifest's shape. This holds
    the whole split in memory: training streams large splits instead (training/stream.py).
    """
    manifest = manifest if manifest is not None else read_manifest(dataset_dir)
    entries = split_shards(manifest, split)
    fs = s3_filesystem() if is_s3(dataset_dir) and entries else None
    parts = [
        shard_arrays(read_shard(dataset_dir, entry, fs, verify), entry, manifest, verify)
        for entry in entries
    ]
    if not parts:
        return empty_arrays(manifest)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
