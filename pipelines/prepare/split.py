"""Stable train/val/test assignment by a hash of the image content.

An image's split depends only on its bytes and the fractions, never on what else is in the
dataset, so adding images never moves an existing one to another split (and renaming or
relabelling a file does not either).
"""

from __future__ import annotations

import hashlib

from training.shards import SPLITS

_SALT = b"lepton-split-v1\0"  # separates this use of the content hash from dedup/order


def split_point(content_sha256: bytes) -> float:
    """A uniform number in [0, 1) fixed by the content."""
    digest = hashlib.sha256(_SALT + content_sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(content_sha256: bytes, fractions: tuple[float, float, float]) -> str:
    """`train`, `val` or `test` for this content under (train, val, test) fractions."""
    u = split_point(content_sha256)
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction
        if u < edge and fraction > 0:
            return name
    # Only reachable when rounding leaves u above the last edge: the last non-empty split.
    return next(n for n, f in zip(reversed(SPLITS), reversed(fractions), strict=True) if f > 0)
