"""Which listed files become the dataset: screened by their listing entry, decoded, minus
rejects and exact duplicates (quarantined with reasons), labelled and split by content hash.
Every listed file ends up either used or quarantined."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.prepare.config import PrepareConfig
from pipelines.prepare.errors import PrepareError
from pipelines.prepare.items import RawItem, has_image_extension
from pipelines.prepare.reading import too_large_detail
from pipelines.prepare.report import (
    Quarantined,
    class_problems,
    duplicate_groups,
    reason_counts,
    resolve_duplicates,
)
from pipelines.prepare.spill import DecodedSet
from pipelines.prepare.split import split_indices
from training.shards import SPLITS


def dedupe(
    items: list[RawItem], decoded: DecodedSet, ok: np.ndarray, quarantined: dict[int, Quarantined]
) -> np.ndarray:
    """`ok` (indices into `decoded`, listing order) minus exact duplicates, which are quarantined."""
    keep = np.ones(len(ok), dtype=bool)
    members = np.sort(np.concatenate(duplicate_groups(decoded.sha256[ok]) or [np.zeros(0, int)]))
    if len(members):
        cands = []
        for j in members:
            it = items[int(decoded.positions[ok[j]])]
            cands.append((it.key, it.label or "", bytes(decoded.sha256[ok[j]])))
        kept, dropped = resolve_duplicates(cands)
        for m, (reason, detail) in dropped.items():
            keep[members[m]] = False
            pos = int(decoded.positions[ok[members[m]]])
            quarantined[pos] = Quarantined(items[pos].key, reason, detail)
    return ok[keep]


@dataclass
class Selection:
    """What the decode pass left usable: `used` indexes `decoded`, in content-hash order per
    split after `assign_splits`; every listed file is either used or quarantined."""

    items: list[RawItem]
    decoded: DecodedSet
    classes: list[str]
    used: np.ndarray  # indices into `decoded`
    labels: np.ndarray  # class index of each `used` image
    quarantined: dict[int, Quarantined]  # listing position -> reason

    def report_entries(self) -> list[dict[str, str]]:
        return sorted(
            (q.as_dict() for q in self.quarantined.values()), key=lambda q: (q["key"], q["reason"])
        )


def screen(
    items: list[RawItem], cfg: PrepareConfig
) -> tuple[list[tuple[int, RawItem]], dict[int, Quarantined]]:
    """Files worth decoding, and those quarantined from their listing entry alone."""
    quarantined: dict[int, Quarantined] = {}
    wanted = set(cfg.classes)
    entries: list[tuple[int, RawItem]] = []
    for idx, it in enumerate(items):
        if it.issue is not None:
            reason, detail = it.issue
        elif not has_image_extension(it.key):
            reason, detail = "unknown_extension", "not .png/.jpg/.jpeg/.webp/.bmp"
        elif wanted and it.label not in wanted:
            reason, detail = "unknown_label", f"{it.label!r} is not in the class list"
        elif it.size > cfg.max_file_bytes:
            reason, detail = "too_large", too_large_detail(it.size, cfg.max_file_bytes)
        else:
            entries.append((idx, it))
            continue
        quarantined[idx] = Quarantined(it.key, reason, detail)
    return entries, quarantined


def select(
    items: list[RawItem],
    decoded: DecodedSet,
    classes: list[str],
    quarantined: dict[int, Quarantined],
    cfg: PrepareConfig,
) -> Selection:
    """Decoded images minus rejects and duplicates; refuses an input that is not a dataset."""
    for pos, (reason, detail) in decoded.rejected.items():
        quarantined[pos] = Quarantined(items[pos].key, reason, detail)
    used = dedupe(items, decoded, np.flatnonzero(decoded.rows >= 0), quarantined)
    index_of = {c: i for i, c in enumerate(classes)}
    labels = np.array(
        [index_of[items[int(p)].label or ""] for p in decoded.positions[used]], dtype=np.int64
    )
    selection = Selection(items, decoded, classes, used, labels, quarantined)
    assert len(used) + len(quarantined) == len(items), "every input must be accounted for"
    counts = dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist(), strict=True))
    problems = class_problems(counts, cfg.min_images_per_class)
    if problems:
        raise PrepareError(
            "not a valid dataset, nothing written to the output: "
            + "; ".join(problems)
            + f". Quarantined: {reason_counts(quarantined.values()) or 'none'}"
        )
    return selection


def assign_splits(sel: Selection, cfg: PrepareConfig) -> dict[str, np.ndarray]:
    """Split -> positions into `sel.used`, by content hash, sorted by content hash."""
    hashes = sel.decoded.sha256[sel.used]
    split_of = split_indices(hashes, cfg.split_fractions)
    words = hashes.view(">u8")  # [n, 4]: lexsort by content hash, stable order
    by_split: dict[str, np.ndarray] = {}
    for k, split in enumerate(SPLITS):
        members = np.flatnonzero(split_of == k)
        order = np.lexsort(tuple(words[members, c] for c in range(3, -1, -1)))
        by_split[split] = members[order]
    return by_split


def class_counts(sel: Selection, members: np.ndarray) -> dict[str, int]:
    counts = np.bincount(sel.labels[members], minlength=len(sel.classes)).tolist()
    return dict(zip(sel.classes, counts, strict=True))
