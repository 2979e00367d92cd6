"""Move step inputs and outputs between S3 and a step's work folder, as SageMaker does.

`download` mirrors an S3 prefix (or one object, or instance i's share of n) into a folder, small
objects through pipelines/runner/fetch.py; `upload` mirrors a folder to a prefix. Keys are confined to the destination folder: a key with `..` or an absolute path can
never write outside it.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.progress import Progress
from pipelines.runner import fetch
from pipelines.storage import is_s3_uri, split_s3_uri

_THREADS = 32  # S3 GET/PUT of small objects is latency-bound: many in flight
_SMALL_OBJECT_BYTES = 8 * 1024 * 1024
PROGRESS_EVERY_S = 5.0


def safe_relative(key: str, prefix: str) -> PurePosixPath:
    """The part of `key` below `prefix`, refused if it would leave the destination."""
    rel = key[len(prefix) :].lstrip("/") if key.startswith(prefix) else key
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or any(part in ("..", "") for part in path.parts):
        raise ValueError(f"refusing S3 key that would escape the destination folder: {key!r}")
    return path


def list_objects(client: Any, uri: str) -> list[dict[str, Any]]:
    """Every object under an s3:// prefix (all pages): ``Key``, ``Size``, ``ETag`` at least."""
    bucket, prefix = split_s3_uri(uri)
    endpoint = fetch.endpoint_of(client)
    if endpoint is not None:  # the local object store: 5x less CPU than boto3's pages
        return fetch.list_objects(endpoint, bucket, prefix)
    objects: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(page.get("Contents", []))
    return objects


class Listings:
    """Each s3:// prefix listed once: a step's cache key fingerprints what its instances then
    download, and N instances of a ShardedByS3Key input share one listing rather than
    listing the whole prefix N times (100,000 keys: ~2 s each here). A listing holds ~370 B an
    object (1,000,000: ~350 MiB): `release` it once the inputs are in place."""

    def __init__(self, client: Any) -> None:
        self.client, self.made, self._seen = client, 0, dict[str, list[dict[str, Any]]]()

    def __call__(self, uri: str) -> list[dict[str, Any]]:
        if uri not in self._seen:
            self._seen[uri] = list_objects(self.client, uri)
            self.made += 1
        return self._seen[uri]

    def release(self) -> None:
        """Forget every listing (a later call lists again)."""
        self._seen.clear()


def fingerprint(client: Any, uri: str, listings: Listings | None = None) -> str:
    """A digest of every key, size and ETag under `uri` (or of a local folder's files)."""
    digest = hashlib.sha256()
    if is_s3_uri(uri):
        listed = listings(uri) if listings is not None else list_objects(client, uri)
        for obj in sorted(listed, key=lambda o: o["Key"]):
            digest.update(f"{obj['Key']}\0{obj['Size']}\0{obj.get('ETag', '')}\n".encode())
    else:
        root = Path(uri)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(
                f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


def share_of(items: list[Any], share: tuple[int, int] | None) -> list[Any]:
    """Instance `i` of `n`'s part of a ShardedByS3Key input: every n-th object in key order."""
    if share is None:
        return items
    index, count = share
    return items[index::count]


def _copy_local(src: Path, dest: Path, share: tuple[int, int] | None) -> int:
    if src.is_file():
        shutil.copy2(src, dest / src.name)
        return 1
    if share is None:
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return sum(1 for p in src.rglob("*") if p.is_file())
    files = share_of(sorted(p for p in src.rglob("*") if p.is_file()), share)
    for path in files:
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return len(files)


def download(
    client: Any,
    uri: str,
    dest: Path,
    share: tuple[int, int] | None = None,
    log: Callable[[str], None] | None = None,
    listings: Listings | None = None,
) -> int:
    """Mirror `uri` (an s3:// prefix or object, or a local path) into `dest`; return file count.
    With `share` = (i, n), only instance i's part of n (ShardedByS3Key). `log` gets a progress
    line every PROGRESS_EVERY_S while objects are fetched (none for a short download).
    `listings`: the objects as listed before (the step's cache key), not listed again."""
    dest.mkdir(parents=True, exist_ok=True)
    if not is_s3_uri(uri):
        return _copy_local(Path(uri), dest, share)
    bucket, prefix = split_s3_uri(uri)
    listed = listings(uri) if listings is not None else list_objects(client, uri)
    objects = [o for o in listed if not o["Key"].endswith("/")]
    if not objects:
        raise FileNotFoundError(f"nothing found under {uri}")
    exact = [o for o in objects if o["Key"] == prefix]
    if exact:  # one object: it lands in dest under its own name, like SageMaker does
        objects = exact
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    else:
        base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
    objects = share_of(sorted(objects, key=lambda o: o["Key"]), share)
    targets = [(o, dest / safe_relative(o["Key"], base)) for o in objects]
    for folder in {t.parent for _, t in targets}:
        folder.mkdir(parents=True, exist_ok=True)
    progress = Progress(
        log or _silent, "fetched", len(targets), "objects", PROGRESS_EVERY_S, quiet_if_short=True
    )
    small = [(o["Key"], t) for o, t in targets if o.get("Size", 0) <= _SMALL_OBJECT_BYTES]
    endpoint = fetch.endpoint_of(client) if small else None
    fetched = 0
    if endpoint is not None:
        fetched = fetch.fetch_objects(endpoint, bucket, small, progress.update)
        targets = [(o, t) for o, t in targets if o.get("Size", 0) > _SMALL_OBJECT_BYTES]

    def get(pair: tuple[dict[str, Any], Path]) -> None:
        obj, target = pair
        if obj.get("Size", 0) > _SMALL_OBJECT_BYTES:
            client.download_file(bucket, obj["Key"], str(target))  # multipart, resumable
            return
        # Small objects: one GET each (download_file adds a HEAD per object, 2x the round trips).
        body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(body)
        tmp.replace(target)

    with ThreadPoolExecutor(_THREADS) as pool:
        for done, _ in enumerate(pool.map(get, targets), fetched + 1):
            progress.update(done)
    return len(objects)


def _silent(_line: str) -> None:
    pass


def upload(client: Any, src: Path, uri: str) -> int:
    """Mirror the folder `src` to the s3:// prefix `uri` (or copy to a local path)."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not is_s3_uri(uri):
        shutil.copytree(src, Path(uri), dirs_exist_ok=True)
        return len(files)
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/")

    def put(path: Path) -> None:
        key = f"{prefix}/{path.relative_to(src).as_posix()}" if prefix else path.name
        client.upload_file(str(path), bucket, key)

    with ThreadPoolExecutor(_THREADS) as pool:
        list(pool.map(put, files))
    return len(files)


def exists(client: Any, uri: str) -> bool:
    if not is_s3_uri(uri):
        return Path(uri).exists()
    return bool(list_objects(client, uri))


def put_file(client: Any, path: Path, uri: str) -> None:
    """One file to an s3:// URI (or a local path)."""
    if not is_s3_uri(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, uri)
        return
    bucket, key = split_s3_uri(uri)
    client.upload_file(str(path), bucket, key)
