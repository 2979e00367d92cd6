"""Quarantine bookkeeping, duplicate resolution, class checks and channel statistics."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Reasons, in the order they are checked. The decode ones come from inference.preprocess.
REASONS = (
    "unsafe_key",  # a symlink or manifest path leading outside the input
    "invalid_manifest_line",  # a .jsonl line that is not {"source-ref": ..., "class": ...}
    "unknown_extension",  # not .png/.jpg/.jpeg/.webp/.bmp
    "unknown_label",  # no class folder, an unusable class name, or not in the class list
    "unreadable",  # I/O or permission error on one file
    "changed",  # content differs from the listing (ETag / hash), or deleted since
    "empty",
    "undecodable",
    "unsupported_format",
    "truncated",
    "too_small",
    "too_large",
    "duplicate",  # same bytes as an earlier key with the same label (the first is kept)
    "duplicate_conflicting_labels",  # same bytes under different labels (all are dropped)
)


@dataclass(frozen=True, slots=True)
class Quarantined:
    key: str
    reason: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"key": self.key, "reason": self.reason, "detail": self.detail}


def duplicate_groups(sha256: np.ndarray) -> list[np.ndarray]:
    """Groups (sorted index arrays) of rows of uint8 [n, 32] hashes that occur more than once."""
    if len(sha256) == 0:
        return []
    keys = np.ascontiguousarray(sha256).view(f"V{sha256.shape[1]}").ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    dup = np.flatnonzero(counts > 1)
    if len(dup) == 0:
        return []
    members = np.flatnonzero(np.isin(inverse, dup))
    order = members[np.lexsort((members, inverse[members]))]
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return list(np.split(order, bounds))


def resolve_duplicates(
    candidates: Sequence[tuple[str, str, bytes]],
) -> tuple[set[int], dict[int, tuple[str, str]]]:
    """Exact duplicates among usable images: (key, label, content sha256) in key order.

    Returns (kept positions, {position: (reason, detail)}). Same content under one label keeps
    the first key; under two or more labels every copy is quarantined, since no label can be
    trusted.
    """
    groups: dict[bytes, list[int]] = defaultdict(list)
    for pos, (_, _, sha) in enumerate(candidates):
        groups[sha].append(pos)
    kept: set[int] = set()
    dropped: dict[int, tuple[str, str]] = {}
    for positions in groups.values():
        if len(positions) == 1:
            kept.add(positions[0])
            continue
        labels = sorted({candidates[p][1] for p in positions})
        first_key = candidates[positions[0]][0]
        if len(labels) > 1:
            keys = [candidates[p][0] for p in positions]
            for p in positions:
                others = [k for k in keys if k != candidates[p][0]][:3]
                dropped[p] = (
                    "duplicate_conflicting_labels",
                    f"same content under labels {labels}: also {others}",
                )
            continue
        kept.add(positions[0])
        for p in positions[1:]:
            dropped[p] = ("duplicate", f"same content as {first_key!r} (kept)")
    return kept, dropped


def class_problems(counts: Mapping[str, int], min_images: int) -> list[str]:
    """Reasons the class list cannot make a dataset (empty list = fine)."""
    problems: list[str] = []
    if len(counts) < 2:
        problems.append(f"need at least 2 classes, found {len(counts)}: {sorted(counts)}")
    low = {c: n for c, n in counts.items() if n < min_images}
    if low:
        shown = ", ".join(f"{c!r}: {n}" for c, n in sorted(low.items())[:20])
        problems.append(
            f"{len(low)} class(es) under the minimum of {min_images} usable images ({shown})"
        )
    return problems


def imbalance_warnings(
    split_counts: Mapping[str, Mapping[str, int]],
    fractions: Mapping[str, float],
    ratio: float,
) -> list[str]:
    warnings: list[str] = []
    train = split_counts.get("train", {})
    if train and min(train.values()) > 0:
        big, small = (
            max(train.items(), key=lambda kv: kv[1]),
            min(train.items(), key=lambda kv: kv[1]),
        )
        if big[1] / small[1] > ratio:
            warnings.append(
                f"class imbalance in train: {big[0]!r} has {big[1]} images, "
                f"{small[0]!r} has {small[1]} (ratio {big[1] / small[1]:.1f} > {ratio})"
            )
    for split, counts in split_counts.items():
        if fractions.get(split, 0) <= 0:
            continue
        missing = [c for c, n in counts.items() if n == 0]
        if missing:
            warnings.append(f"split {split!r} has no images of class(es) {missing[:10]}")
    return warnings


def channel_mean_std(
    sums: Sequence[int], sumsqs: Sequence[int], values_per_channel: int
) -> tuple[list[float], list[float]]:
    """Mean and (population) std on the 0..1 scale from exact integer sums of uint8 values.

    Integer sums make the result independent of worker count and chunk order.
    """
    mean: list[float] = []
    std: list[float] = []
    n = values_per_channel
    for s, ss in zip(sums, sumsqs, strict=True):
        if n == 0:
            mean.append(0.0)
            std.append(1.0)
            continue
        var_num = n * ss - s * s  # n^2 * variance * 255^2, exact
        mean.append(s / (n * 255.0))
        # a constant channel must not divide by zero (same floor as training.shards.channel_stats)
        std.append(max(math.sqrt(var_num) / (n * 255.0), 1e-6))
    return mean, std


def reason_counts(quarantined: Iterable[Quarantined]) -> dict[str, int]:
    return dict(sorted(Counter(q.reason for q in quarantined).items()))
