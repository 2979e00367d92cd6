"""Dataset shards and manifest (docs/contracts.md "Dataset"): numpy only, no torch.

Imported by the prepare step (writer), the training step and the evaluate step (readers), so
it must stay light: numpy, hashlib, zipfile, json and (lazily) s3fs for ``s3://`` folders.

Shards are ``.npz`` files written deterministically (fixed zip timestamps, ZIP_STORED, fixed
member order) so the same arrays always produce the same bytes and the same sha256; this is
what lets the pipeline cache steps and the manifest pin its data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # earliest zip timestamp: fixed so bytes are reproducible


class DatasetError(RuntimeError):
    """A dataset folder is missing, malformed, or fails its integrity check."""


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def shard_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Serialise one shard to deterministic ``.npz`` bytes (images uint8 NHWC, labels int64)."""
    images = np.ascontiguousarray(images)
    labels = np.ascontiguousarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise ValueError(f"labels must be int64 [N], got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in (("images", images), ("labels", labels)):
            member = io.BytesIO()
            npy_format.write_array(member, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fh)`` on a temp file in ``path``'s folder, fsync, then ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are shared read-only
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda fh: fh.write(data))


def write_shard(path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray) -> str:
    """Write one shard atomically and deterministically; returns its sha256 (hex)."""
    data = shard_bytes(images, labels)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``<split>-<NNNNN>.npz``."""
    return f"{split}-{index:05d}.npz"


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
    code_version: str = "unknown",
    raw_fingerprint: str = "",
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write already-split arrays as shards plus a manifest; returns the manifest.

    A convenience for tests, benchmarks and simple producers; the prepare step may build its
    manifest itself as long as it follows docs/contracts.md.
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
            sha = write_shard(out / name, images[idx], labels[idx].astype(np.int64))
            shards.append({"file": name, "split": split, "count": int(len(idx)), "sha256": sha})
    cfg = dict(config or {})
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "classes": list(classes),
        "image_size": [int(train_images.shape[1]), int(train_images.shape[2])],
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


# ---------------------------------------------------------------------------------------------
# Reading (local path or s3:// URI)
# ---------------------------------------------------------------------------------------------
def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_filesystem() -> Any:
    """A fresh s3fs filesystem (default credential chain; honours AWS_ENDPOINT_URL_S3).

    Not fsspec's cached instance: a long-lived process (tests, a notebook) may see the
    endpoint or credentials change between calls.
    """
    import s3fs  # lazy: only remote datasets need it

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _read_bytes(dataset_dir: str | os.PathLike[str], name: str, fs: Any | None = None) -> bytes:
    base = os.fspath(dataset_dir)
    if _is_s3(base):
        fs = fs if fs is not None else s3_filesystem()
        key = base.rstrip("/") + "/" + name
        try:
            with fs.open(key, "rb") as fh:
                return fh.read()
        except FileNotFoundError as exc:
            raise FileNotFoundError(key) from exc
    with open(Path(base) / name, "rb") as fh:
        return fh.read()


def read_manifest_bytes(dataset_dir: str | os.PathLike[str]) -> bytes:
    """Raw bytes of ``manifest.json`` (what ``data_manifest_sha256`` hashes)."""
    try:
        return _read_bytes(dataset_dir, MANIFEST_NAME)
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
    raw = read_manifest_bytes(dataset_dir)
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{MANIFEST_NAME} in {os.fspath(dataset_dir)!r} is not JSON: {exc}"
        ) from exc
    missing = [
        k
        for k in ("classes", "image_size", "channels", "mean", "std", "shards")
        if k not in manifest
    ]
    if missing:
        raise DatasetError(f"{MANIFEST_NAME} in {os.fspath(dataset_dir)!r} lacks {missing}")
    if manifest.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise DatasetError(f"unsupported dataset format_version {manifest['format_version']}")
    return manifest


def _load_shard_bytes(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or labels.ndim != 1:
        raise DatasetError(
            f"shard {name}: bad arrays {images.dtype}{images.shape}, {labels.dtype}{labels.shape}"
        )
    return images, labels.astype(np.int64, copy=False)


def load_split(
    dataset_dir: str | os.PathLike[str],
    split: str,
    verify: bool = True,
    manifest: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 ``[N, H, W, C]``) and labels (int64 ``[N]``) of one split.

    With ``verify`` each shard's sha256 must equal the manifest's, else DatasetError names
    the shard. An empty split returns zero-length arrays of the manifest's shape.
    """
    manifest = manifest if manifest is not None else read_manifest(dataset_dir)
    entries = [s for s in manifest["shards"] if s["split"] == split]
    fs = s3_filesystem() if _is_s3(os.fspath(dataset_dir)) and entries else None
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for entry in entries:
        name = entry["file"]
        try:
            data = _read_bytes(dataset_dir, name, fs)
        except FileNotFoundError as exc:
            raise DatasetError(f"shard {name} listed in the manifest is missing") from exc
        if verify:
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry["sha256"]:
                raise DatasetError(
                    f"shard {name} sha256 mismatch: manifest says {entry['sha256']}, file is "
                    f"{digest}; refusing a corrupted or altered dataset"
                )
        x, y = _load_shard_bytes(data, name)
        if "count" in entry and len(y) != int(entry["count"]):
            raise DatasetError(
                f"shard {name} holds {len(y)} samples, manifest says {entry['count']}"
            )
        images.append(x)
        labels.append(y)
    if not images:
        h, w = manifest["image_size"]
        return np.zeros((0, h, w, manifest["channels"]), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels)
