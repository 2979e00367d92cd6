"""The prepare step's core: raw images -> shards + quality_report.json + manifest.json.

Passes, each streaming:
1. list the input and fingerprint it (S3 ETags, local files' sha256); if the output's manifest
   already has this fingerprint, config and code version, stop: nothing to do. A first run
   over a local folder has nothing to compare with: it lists without reading the files;
2. decode in a process pool, chunk by chunk; workers spill encoded images to scratch files
   and return small per-item records (content hash, quarantine reason, exact channel sums);
   a first run's listing is completed with those content hashes;
3. in the main process: dedupe, check classes, assign splits by content hash; nothing has been
   written to the output yet, so an invalid input leaves no trace there;
4. write WebDataset tar shards in order from the spill files (one built while the previous one
   is stored), then the report, then the manifest last.
Memory: about one chunk per worker, ~2x one shard while writing (the shard being built, the
previous one being stored) plus at most 16 mapped spill files, and ~0.6 KB of metadata per
listed file (100,000 tiny images: ~250 MB peak in the main process).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.imports import code_version as _closure_version
from pipelines.prepare.config import PrepareConfig
from pipelines.prepare.decode import DecodeSpec
from pipelines.prepare.errors import PrepareError
from pipelines.prepare.items import Listing, RawItem
from pipelines.prepare.output import REPORT_NAME, Destination
from pipelines.prepare.parts import Cluster, read_cluster
from pipelines.prepare.report import (
    Quarantined,
    channel_mean_std,
    imbalance_warnings,
    reason_counts,
)
from pipelines.prepare.selection import Selection, assign_splits, class_counts, screen, select
from pipelines.prepare.sources import list_source
from pipelines.prepare.spill import DecodedSet, SpillReader, run_decode_pass, with_read_hashes
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, split_s3_uri
from training.shards import SPLITS, format_fields, sample_key, shard_entry, shard_name
from training.wds import EXTENSIONS, sample_frame

ENTRY_MODULE = "pipelines.prepare.step"  # the code behind a prepared dataset
Log = Callable[[str], None]


def code_version() -> str:
    """The digest of the Prepare step's import closure: a code change re-prepares."""
    return _closure_version(ENTRY_MODULE)


@dataclass
class PrepareResult:
    output: str
    skipped: bool  # True when the output was already up to date (no work done)
    manifest: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)  # empty when skipped
    seconds: float = 0.0  # wall time of the whole call
    decode_images_per_second: float = 0.0  # images through the decode pass per second


def _stderr(message: str) -> None:
    print(f"prepare: {message}", file=sys.stderr, flush=True)


def _check_not_nested(cfg: PrepareConfig) -> None:
    """The output inside the input would be listed as raw data next time (and vice versa)."""
    if cfg.input.rstrip("/").endswith(".jsonl"):
        return
    if is_s3_uri(cfg.input) and is_s3_uri(cfg.output):
        (bi, pi), (bo, po) = split_s3_uri(cfg.input), split_s3_uri(cfg.output)
        a, b = pi.strip("/") + "/", po.strip("/") + "/"
        nested = bi == bo and (a.startswith(b) or b.startswith(a) or a == "/" or b == "/")
    elif not is_s3_uri(cfg.input) and not is_s3_uri(cfg.output):
        a, b = os.path.realpath(cfg.input), os.path.realpath(cfg.output)
        nested = os.path.commonpath([a, b]) in (a, b)
    else:
        nested = False
    if nested:
        raise PrepareError(
            f"input {cfg.input!r} and output {cfg.output!r} overlap; "
            "write the dataset somewhere outside the raw data"
        )


def is_up_to_date(
    manifest: dict[str, Any] | None, fingerprint: str, cfg: PrepareConfig, existing: set[str]
) -> bool:
    if not manifest:
        return False
    same = (
        manifest.get("raw_fingerprint") == fingerprint
        and manifest.get("config_sha256") == cfg.config_sha256()
        and manifest.get("code_version") == code_version()
    )
    files = {s.get("file") for s in manifest.get("shards", [])} | {REPORT_NAME}
    return same and files <= existing


def prepare(
    cfg: PrepareConfig,
    settings: Settings | None = None,
    *,
    log: Log | None = None,
    listing: Listing | None = None,
) -> PrepareResult:
    """Prepare a dataset from `cfg.input` into `cfg.output` (see the module docstring).

    `settings` gives S3 access; None uses boto3's default chain (a step in a container).
    `listing` skips listing the input (tests use it to change objects after listing).
    Raises DataError subclasses with a clear message; the output is untouched on error
    before the writing pass.
    """
    log = log or _stderr
    t_start = time.perf_counter()
    _check_not_nested(cfg)
    if cfg.work_dir:
        Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="lepton-prepare-", dir=cfg.work_dir or None)
    try:
        staging = os.path.join(scratch, "staging")
        spills = os.path.join(scratch, "spill")
        os.makedirs(staging)
        os.makedirs(spills)
        dest = Destination(cfg.output, settings, staging)
        dest.check_access()
        cluster = read_cluster(cfg.resource_config)
        existing = dest.read_manifest()
        lazy = listing is None and _hash_while_decoding(cfg, cluster, existing)
        if listing is None:
            log(f"listing {cfg.input}")
            listing = _list(cfg, settings, cluster, names_only=lazy)
        if len(cluster.hosts) > 1:
            from pipelines.prepare.instances import run_instance

            return run_instance(cfg, settings, log, listing, dest, scratch, cluster, t_start, lazy)
        took = f"({time.perf_counter() - t_start:.1f}s)"
        if lazy:
            log(
                f"{len(listing.items)} files listed {took}; a first run: contents hashed as decoded"
            )
        else:
            fingerprint = listing.fingerprint()
            log(f"{len(listing.items)} files listed {took}, fingerprint {fingerprint[:12]}")
            if not cfg.force and is_up_to_date(existing, fingerprint, cfg, dest.existing_names()):
                log(
                    f"{cfg.output} is up to date (same raw fingerprint, config and code); "
                    "nothing to do"
                )
                assert existing is not None
                return PrepareResult(
                    cfg.output, True, existing, seconds=time.perf_counter() - t_start
                )
        entries, quarantined = screen(listing.items, cfg)
        screened = quarantined, _classes(cfg, entries)
        decoded, rate = run_decode_pass(
            entries, _spec(cfg, spills, settings), cfg.workers, cfg.chunk_size, log
        )
        del entries
        if lazy:  # only sizes and hashes change, and a file over the limit was refused unread
            listing = with_read_hashes(listing, decoded)
        return _finish(cfg, log, listing, decoded, rate, dest, spills, t_start, screened)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _hash_while_decoding(
    cfg: PrepareConfig, cluster: Cluster, existing: dict[str, Any] | None
) -> bool:
    """A first run over a local folder (no dataset at the output yet, or --force) needs no
    content hashes before decoding: there is nothing to be up to date with, so the decode
    workers hash each file as they read it, and every file is read once instead of twice.
    Nor does one of several instances: each decodes its share whatever the output holds."""
    local = not is_s3_uri(cfg.input) and not cfg.input.rstrip("/").endswith(".jsonl")
    return local and (len(cluster.hosts) > 1 or cfg.force or existing is None)


def _list(
    cfg: PrepareConfig, settings: Settings | None, cluster: Cluster, names_only: bool = False
) -> Listing:
    """The input's listing; one of several instances may be given an empty share."""
    share = len(cluster.hosts) > 1 and not is_s3_uri(cfg.input)
    if share and os.path.isdir(cfg.input) and not any(os.scandir(cfg.input)):
        return Listing(cfg.input, [])
    return list_source(cfg.input, settings, names_only=names_only)


def _classes(cfg: PrepareConfig, entries: list[tuple[int, RawItem]]) -> list[str]:
    """The class list: the configured one, else every label among the screened files."""
    return list(cfg.classes) or sorted({it.label for _, it in entries if it.label})


def _spec(cfg: PrepareConfig, spills: str, settings: Settings | None) -> DecodeSpec:
    return DecodeSpec(
        cfg.image_size,
        cfg.channels,
        cfg.max_pixels,
        cfg.min_side,
        spills,
        settings,
        cfg.encoding,
        cfg.jpeg_quality,
        cfg.keep_original_size,
        cfg.max_file_bytes,
    )


TAR_OVERHEAD = 3 * 512  # bytes a sample adds to a tar besides its image: 2 headers, label


def _shard_count(sizes: np.ndarray, cfg: PrepareConfig) -> int:
    """Shards of a split whose encoded images have these sizes (equal counts per shard)."""
    if len(sizes) == 0:
        return 0
    tar = int(sizes.sum()) + len(sizes) * TAR_OVERHEAD
    return max(math.ceil(len(sizes) / cfg.shard_size), math.ceil(tar / cfg.shard_max_bytes))


def _train_mean_std(
    sel: Selection, train: np.ndarray, cfg: PrepareConfig
) -> tuple[list[float], list[float]]:
    """Exact per-channel mean/std of the train split (0..1 scale), from integer sums."""
    h, w = cfg.image_size
    rows = sel.used[train]
    if len(rows):
        sums = [int(v) for v in sel.decoded.channel_sums[rows].astype(object).sum(axis=0)]
        sumsqs = [int(v) for v in sel.decoded.channel_sumsqs[rows].astype(object).sum(axis=0)]
    else:
        sums = sumsqs = [0] * cfg.channels
    return channel_mean_std(sums, sumsqs, len(rows) * h * w)


def _warnings(
    sel: Selection, split_counts: dict[str, dict[str, int]], cfg: PrepareConfig
) -> list[str]:
    warnings = imbalance_warnings(
        split_counts, dict(zip(SPLITS, cfg.split_fractions, strict=True)), cfg.imbalance_ratio
    )
    changed = sum(1 for q in sel.quarantined.values() if q.reason == "changed")
    if changed:
        warnings.append(
            f"{changed} object(s) changed or vanished between listing and reading; "
            "they are quarantined as 'changed' (run again for a consistent snapshot)"
        )
    if sel.quarantined:
        warnings.append(
            f"{len(sel.quarantined)} of {len(sel.items)} files quarantined: "
            f"{reason_counts(sel.quarantined.values())}"
        )
    return warnings


def _write_shards(
    sel: Selection,
    by_split: dict[str, np.ndarray],
    dest: Destination,
    spills: str,
    cfg: PrepareConfig,
    log: Log,
) -> list[dict[str, Any]]:
    """Shards in order from the spill files; stale shards of an earlier run removed.

    Building a shard's tar bytes holds the GIL; hashing, writing, fsync and uploading it do
    not, so a writer thread stores shard k while the next is built (at most one waits).
    """
    reader = SpillReader(spills, sel.decoded)
    ext = EXTENSIONS[cfg.encoding]
    shards: list[dict[str, Any]] = []

    def store(name: str, split: str, count: int, data: bytearray) -> dict[str, Any]:
        dest.put_shard(name, data)
        return shard_entry(name, split, count, data)

    def collect(pending: Future[dict[str, Any]] | None) -> None:
        if pending is not None:
            shards.append(pending.result())
            log(
                f"wrote {shards[-1]['file']}: {shards[-1]['count']} images, "
                f"sha256 {shards[-1]['sha256'][:12]}"
            )

    pending: Future[dict[str, Any]] | None = None
    with reader, ThreadPoolExecutor(1, thread_name_prefix="lepton-shard-writer") as writer:
        for split in SPLITS:
            members = by_split[split]
            n_shards = _shard_count(sel.decoded.sizes[sel.used[members]], cfg)
            first = 0
            for i, part in enumerate(np.array_split(members, n_shards) if n_shards else []):
                picked = sel.used[part]
                sizes = sel.decoded.sizes[picked]
                data, at = sample_frame(
                    [sample_key(first + j) for j in range(len(part))],
                    [ext] * len(part),
                    sizes,
                    sel.labels[part].tolist(),
                )
                reader.copy_into(data, at, picked)
                collect(pending)
                pending = writer.submit(store, shard_name(split, i), split, len(part), data)
                del data
                first += len(part)
        collect(pending)
    stale = dest.remove_stale_shards({s["file"] for s in shards})
    if stale:
        log(f"removed {len(stale)} stale shard(s) of an earlier run")
    return shards


def _finish(
    cfg: PrepareConfig,
    log: Log,
    listing: Listing,
    decoded: DecodedSet,
    rate: float,
    dest: Destination,
    spills: str,
    t_start: float,
    screened: tuple[dict[int, Quarantined], list[str]] | None = None,
) -> PrepareResult:
    """Select, split, then write (shards, report, manifest last) from a decode pass's results.
    `screened`: the listing's screen (quarantined, classes) when the decode pass's caller made
    it; merged parts are screened here."""
    items = listing.items
    fingerprint = listing.fingerprint()
    if screened is None:
        entries, quarantined = screen(items, cfg)
        screened = quarantined, _classes(cfg, entries)
        del entries
    quarantined, classes = screened
    sel = select(items, decoded, classes, quarantined, cfg)
    by_split = assign_splits(sel, cfg)
    split_counts = {s: class_counts(sel, m) for s, m in by_split.items()}
    mean, std = _train_mean_std(sel, by_split["train"], cfg)
    warnings = _warnings(sel, split_counts, cfg)
    for warning in warnings:
        log(f"warning: {warning}")

    # ---- writing: only now does the output change -------------------------------------------
    t_write = time.perf_counter()
    dest.begin()
    shards = _write_shards(sel, by_split, dest, spills, cfg, log)
    report_list = sel.report_entries()
    report = {
        "total": len(items),
        "used": len(sel.used),
        "quarantined": report_list,
        "warnings": warnings,
    }
    dest.put_json(REPORT_NAME, report)
    manifest = {
        **format_fields(cfg.encoding, None if cfg.keep_original_size else cfg.image_size),
        "dataset": cfg.dataset_name,
        "classes": classes,
        "image_size": list(cfg.image_size),
        "channels": cfg.channels,
        "mean": mean,
        "std": std,
        "splits": {
            s: {"count": len(m), "class_counts": split_counts[s]} for s, m in by_split.items()
        },
        "shards": shards,
        "code_version": code_version(),
        "raw_fingerprint": fingerprint,
        "snapshot": cfg.snapshot,
        "config": cfg.manifest_config(),
        "config_sha256": cfg.config_sha256(),
    }
    manifest_sha = dest.put_manifest(manifest)
    seconds = time.perf_counter() - t_start
    log(
        f"done: {len(sel.used)} images in {len(shards)} shards "
        f"({', '.join(f'{s} {len(m)}' for s, m in by_split.items())}), "
        f"{len(report_list)} quarantined, manifest sha256 {manifest_sha[:12]}, {seconds:.1f}s "
        f"({time.perf_counter() - t_write:.1f}s writing)"
    )
    return PrepareResult(cfg.output, False, manifest, report, seconds, rate)
