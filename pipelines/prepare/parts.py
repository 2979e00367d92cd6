"""Prepare on several instances (SageMaker ProcessingInstanceCount > 1).

SageMaker gives each instance a disjoint part of the input (ShardedByS3Key) and
``/opt/ml/config/resourceconfig.json`` naming it (``current_host``) and all instances
(``hosts``). Every instance lists, screens and decodes its part (the expensive work); each
but the first writes the result, a *part*, under the exchange prefix: its listing, per-image
records (content hash, exact channel sums, quarantine reasons) and its spill files of encoded
images, then a marker with every file's sha256, last. The first host keeps its own part where
it is, waits for the others' markers, merges the parts into one listing in key order and
finishes as a single instance would: global dedupe, content-hash splits, shards, report and
manifest. So the output is byte-identical for any number of instances.

Why the first instance finishes, within the same job, rather than a second step: processing
outputs are uploaded only when the job ends, so parts travel through S3 directly (the
role can write the artifact bucket); a second step would add a pipeline step and a second
container start for the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pipelines.prepare.decode import spill_path
from pipelines.prepare.errors import PrepareError
from pipelines.prepare.items import Listing, RawItem
from pipelines.prepare.reading import make_client
from pipelines.prepare.spill import DecodedSet
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, split_s3_uri

MARKER = "part.json"
# every per-image array of a decode pass: what a part carries besides its reasons
_ARRAYS = tuple(f.name for f in fields(DecodedSet) if f.name != "rejected")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Cluster:
    host: str
    hosts: tuple[str, ...]

    @property
    def leader(self) -> bool:
        return self.host == self.hosts[0]


def read_cluster(path: str) -> Cluster:
    """This instance and all of them, from resourceconfig.json ("" or missing: one)."""
    if not path or not os.path.exists(path):
        return Cluster("algo-1", ("algo-1",))
    doc = json.loads(Path(path).read_text())
    hosts = tuple(str(h) for h in doc.get("hosts") or [doc.get("current_host", "algo-1")])
    return Cluster(str(doc.get("current_host", hosts[0])), hosts)


def job_name(resource_config: str) -> str:
    """The processing job's name (processingjobconfig.json beside resourceconfig.json)."""
    path = Path(resource_config).with_name("processingjobconfig.json")
    if resource_config and path.exists():
        return str(json.loads(path.read_text()).get("ProcessingJobName", "job"))
    return "job"


class Exchange:
    """A folder or s3:// prefix where the instances leave their parts."""

    def __init__(self, uri: str, settings: Settings | None) -> None:
        self.uri = uri.rstrip("/")
        self.client = make_client(settings) if is_s3_uri(uri) else None

    def _key(self, rel: str) -> tuple[str, str]:
        bucket, prefix = split_s3_uri(self.uri)
        return bucket, f"{prefix.strip('/')}/{rel}".lstrip("/")

    def put(self, rel: str, path: Path) -> None:
        if self.client is None:
            target = Path(self.uri) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        else:
            self.client.upload_file(str(path), *self._key(rel))

    def get(self, rel: str, path: Path) -> bool:
        """Copy `rel` to `path`; False when it does not exist (yet)."""
        if self.client is None:
            source = Path(self.uri) / rel
            if not source.exists():
                return False
            shutil.copyfile(source, path)
            return True
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(*self._key(rel), str(path))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return False
            raise
        return True

    def remove(self, rel: str) -> None:
        if self.client is None:
            shutil.rmtree(Path(self.uri) / rel, ignore_errors=True)
            return
        bucket, prefix = self._key(rel)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def _sha(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def stage_part(listing: Listing, decoded: DecodedSet, spills: str) -> tuple[Path, dict[str, Path]]:
    """This instance's part as local files: the folder its listing and decode records were
    written to (``part/`` beside `spills`), and every file of the part (name -> path), the
    spill files it used included."""
    staging = Path(spills).parent / "part"
    staging.mkdir(exist_ok=True)
    items = [[it.key, it.label, it.size, it.etag, list(it.issue or ())] for it in listing.items]
    (staging / "listing.json").write_text(json.dumps(items))
    (staging / "rejected.json").write_text(
        json.dumps({str(k): list(v) for k, v in decoded.rejected.items()})
    )
    np.savez(staging / "decoded.npz", **{a: getattr(decoded, a) for a in _ARRAYS})
    files = {name: staging / name for name in ("listing.json", "rejected.json", "decoded.npz")}
    for chunk in sorted({int(c) for c in decoded.chunks[decoded.rows >= 0]}):
        path = Path(spill_path(spills, chunk))
        files[f"spill/{path.name}"] = path
    return staging, files


def local_part(listing: Listing, decoded: DecodedSet, spills: str) -> Path:
    """The first instance's own part as a folder `merge_parts` reads, without a round trip
    through the exchange: the staged records, with the spill folder moved in."""
    staging, _ = stage_part(listing, decoded, spills)
    os.replace(spills, staging / "spill")
    return staging


def write_part(
    exchange: Exchange, where: str, listing: Listing, decoded: DecodedSet, spills: str, log: Log
) -> None:
    """This instance's listing, decode records and spill files; the marker last."""
    staging, files = stage_part(listing, decoded, spills)
    digests = {}
    for name, path in files.items():
        digests[name] = _sha(path)
        exchange.put(f"{where}/{name}", path)
    (staging / MARKER).write_text(json.dumps({"files": digests}, sort_keys=True))
    exchange.put(f"{where}/{MARKER}", staging / MARKER)
    log(f"part written to {exchange.uri}/{where}: {len(listing.items)} files listed")


def _fetch_part(exchange: Exchange, where: str, into: Path) -> bool:
    """Download one part if its marker is there and every file matches it."""
    into.mkdir(parents=True, exist_ok=True)
    if not exchange.get(f"{where}/{MARKER}", into / MARKER):
        return False
    digests = json.loads((into / MARKER).read_text())["files"]
    for name, digest in digests.items():
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not exchange.get(f"{where}/{name}", target) or _sha(target) != digest:
            return False  # a part being rewritten by a retried instance: wait for it
    return True


def gather_parts(
    exchange: Exchange, prefix: str, hosts: tuple[str, ...], scratch: Path, timeout_s: int, log: Log
) -> list[Path]:
    """Every host's part downloaded into `scratch`, waiting for those not there yet."""
    deadline = time.monotonic() + timeout_s
    pending = list(hosts)
    while pending:
        pending = [h for h in pending if not _fetch_part(exchange, f"{prefix}/{h}", scratch / h)]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise PrepareError(f"instances {pending} left no part in {timeout_s}s; giving up")
        log(f"waiting for the parts of {pending}")
        time.sleep(2.0)
    return [scratch / h for h in hosts]


def merge_parts(parts: list[Path], spills: str, channels: int) -> tuple[Listing, DecodedSet]:
    """One listing (key order) and decode set over every part; spill files renumbered into
    `spills`. The result does not depend on how the input was divided."""
    rows: list[tuple[str, int, int, RawItem]] = []  # (key, part, local position, item)
    arrays: list[dict[str, np.ndarray]] = []
    rejected: list[dict[int, tuple[str, str]]] = []
    next_chunk = 0
    for p, folder in enumerate(parts):
        for pos, (key, label, size, etag, issue) in enumerate(
            json.loads((folder / "listing.json").read_text())
        ):
            item = RawItem(key, label, "", int(size), etag, (issue[0], issue[1]) if issue else None)
            rows.append((key, p, pos, item))
        with np.load(folder / "decoded.npz", allow_pickle=False) as npz:
            part = {a: npz[a] for a in _ARRAYS}
        renumber: dict[int, int] = {}
        for chunk in sorted({int(c) for c in part["chunks"][part["rows"] >= 0]}):
            renumber[chunk] = next_chunk
            os.replace(spill_path(str(folder / "spill"), chunk), spill_path(spills, next_chunk))
            next_chunk += 1
        part["chunks"] = np.array([renumber.get(int(c), -1) for c in part["chunks"]], np.int64)
        part["positions"] = part["positions"] + (p << 40)  # (part, local position) for now
        arrays.append(part)
        reasons = json.loads((folder / "rejected.json").read_text())
        rejected.append({(p << 40) + int(k): (v[0], v[1]) for k, v in reasons.items()})
    rows.sort(key=lambda r: r[0])
    global_pos = {(p << 40) + pos: g for g, (_, p, pos, _) in enumerate(rows)}
    listing = Listing(source="parts", items=[r[3] for r in rows])
    if not arrays:
        return listing, DecodedSet.concat([], channels)
    cat = {a: np.concatenate([part[a] for part in arrays]) for a in _ARRAYS}
    positions = np.array([global_pos[int(v)] for v in cat["positions"]], dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    merged = {a: cat[a][order] for a in _ARRAYS if a != "positions"}
    return listing, DecodedSet(
        positions=positions[order],
        rejected={global_pos[k]: v for part in rejected for k, v in part.items()},
        **merged,
    )
