"""Prepare as one of several instances (pipelines/prepare/parts.py says how they share it)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from pipelines.prepare.config import PrepareConfig
from pipelines.prepare.core import Log, PrepareResult, _finish, _spec
from pipelines.prepare.errors import PrepareError
from pipelines.prepare.items import Listing
from pipelines.prepare.output import Destination
from pipelines.prepare.parts import (
    Cluster,
    Exchange,
    gather_parts,
    job_name,
    local_part,
    merge_parts,
    write_part,
)
from pipelines.prepare.selection import screen
from pipelines.prepare.spill import run_decode_pass, with_read_hashes
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri


def _my_share(listing: Listing, cfg: PrepareConfig, cluster: Cluster) -> Listing:
    """A local folder on an instance is its share already (ShardedByS3Key); an s3:// prefix or
    a manifest is listed whole by every instance, so each keeps a hash partition of the keys."""
    if not (is_s3_uri(cfg.input) or cfg.input.rstrip("/").endswith(".jsonl")):
        return listing
    index, n = cluster.hosts.index(cluster.host), len(cluster.hosts)
    mine = [
        it
        for it in listing.items
        if int.from_bytes(hashlib.sha256(it.key.encode()).digest()[:8], "big") % n == index
    ]
    return Listing(listing.source, mine)


def run_instance(
    cfg: PrepareConfig,
    settings: Settings | None,
    log: Log,
    listing: Listing,
    dest: Destination,
    scratch: str,
    cluster: Cluster,
    t_start: float,
    lazy: bool = False,
) -> PrepareResult:
    """One of several instances (pipelines/prepare/parts.py): decode this instance's share and
    leave it as a part; the first instance then merges every part and writes the dataset.
    `lazy`: the listing has no content hashes yet; the decode pass's complete it."""
    if not cfg.exchange:
        raise PrepareError(f"{len(cluster.hosts)} instances need an exchange prefix (--exchange)")
    exchange, prefix = Exchange(cfg.exchange, settings), job_name(cfg.resource_config)
    listing = _my_share(listing, cfg, cluster)
    spills = os.path.join(scratch, "spill")
    entries, _ = screen(listing.items, cfg)
    hashed = "; contents hashed as decoded" if lazy else ""
    log(f"{cluster.host}: {len(listing.items)} files in this instance's share{hashed}")
    decoded, rate = run_decode_pass(
        entries, _spec(cfg, spills, settings), cfg.workers, cfg.chunk_size, log
    )
    del entries
    if lazy:
        listing = with_read_hashes(listing, decoded)
    if not cluster.leader:
        write_part(exchange, f"{prefix}/{cluster.host}", listing, decoded, spills, log)
        log(f"{cluster.host}: part done; {cluster.hosts[0]} writes the dataset")
        return PrepareResult(cfg.output, False, {}, seconds=time.perf_counter() - t_start)
    # the first instance's own part stays here; only the others' travel through the exchange
    own = local_part(listing, decoded, spills)
    others = gather_parts(
        exchange, prefix, cluster.hosts[1:], Path(scratch) / "parts", cfg.exchange_timeout_s, log
    )
    parts = [own, *others]
    merged_spills = os.path.join(scratch, "merged")
    os.makedirs(merged_spills)
    merged, decoded = merge_parts(parts, merged_spills, cfg.channels)
    log(f"merged {len(parts)} parts: {len(merged.items)} files")
    result = _finish(cfg, log, merged, decoded, rate, dest, merged_spills, t_start)
    exchange.remove(prefix)
    return result
