"""Legacy dataset shards (format_version 1): ``.npz`` of raw pixels. Read so that datasets
prepared before the WebDataset format keep working (in memory only: they were never meant to
stream); written only by tests that check that. numpy only, ``allow_pickle=False``."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from numpy.lib import format as npy_format

LEGACY_FORMAT_VERSION = 1
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # earliest zip timestamp: fixed so bytes are reproducible


def npz_shard_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """One legacy shard as deterministic ``.npz`` bytes (images uint8 NHWC, labels int64)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in (("images", images), ("labels", labels)):
            member = io.BytesIO()
            npy_format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def load_npz_shard(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, C], labels int64 [N]) of one legacy shard; ValueError if bad."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or labels.ndim != 1:
        raise ValueError(f"bad arrays {images.dtype}{images.shape}, {labels.dtype}{labels.shape}")
    return images, labels.astype(np.int64, copy=False)
