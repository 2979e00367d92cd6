"""Listing raw inputs: a local ImageFolder (`pipelines.prepare.local_listing`), an ``s3://``
prefix, a JSON Lines manifest.

A listing is small metadata only (key, label, size, ETag or content hash; see
`pipelines.prepare.items`); bytes are read later, by the decode workers
(`pipelines.prepare.reading`), which compare what they read with what was listed so an object
replaced in between is detected and reported instead of silently mixing two versions into one
dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.prepare.errors import SourceError
from pipelines.prepare.items import Listing, RawItem, clean_label, item_from_key, sha256_file
from pipelines.prepare.local_listing import list_local_folder
from pipelines.prepare.reading import client_error_text, make_client, read_bytes_whole
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, split_s3_uri

T = TypeVar("T")
R = TypeVar("R")


def list_source(
    uri: str, settings: Settings | None, threads: int = 8, names_only: bool = False
) -> Listing:
    """List an input: `*.jsonl` -> manifest; `s3://...` -> prefix; else a local folder
    (sized and content-hashed, or with `names_only` by name alone: size -1, no etag)."""
    if uri.rstrip("/").endswith(".jsonl"):
        return list_manifest(uri.rstrip("/"), settings, threads)
    if is_s3_uri(uri):
        return list_s3_prefix(uri, settings)
    # Local disks: one thread hashes small files fastest (threads only add GIL contention).
    return list_local_folder(uri, names_only=names_only)


def _bounded_map(
    fn: Callable[[T], R], seq: Sequence[T], threads: int, batch: int = 128, window: int = 64
) -> list[R]:
    """`[fn(x) for x in seq]` on threads, `batch` items a task (a future per small file costs
    more than hashing it) and at most `window` tasks alive (bounded memory)."""

    def run(part: Sequence[T]) -> list[R]:
        return [fn(x) for x in part]

    if threads <= 1:
        return run(seq)
    out: list[R] = []
    step = batch * window
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(seq), step):
            parts = [seq[i : i + batch] for i in range(start, min(start + step, len(seq)), batch)]
            for done in pool.map(run, parts):
                out.extend(done)
    return out


def list_s3_prefix(uri: str, settings: Settings | None) -> Listing:
    """Every object under the prefix (all pages: a prefix may hold far more than 1,000)."""
    bucket, prefix = split_s3_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # `raw/mnist` must not also list `raw/mnist-old/...`
    client = make_client(settings)
    items: list[RawItem] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(prefix) :]
                if key.endswith("/") and obj.get("Size", 0) == 0:
                    continue  # a "folder" placeholder object, not a file
                location = f"s3://{bucket}/{obj['Key']}"
                etag = str(obj.get("ETag", "")).strip('"')
                items.append(item_from_key(key, location, int(obj.get("Size", 0)), etag))
    except (ClientError, BotoCoreError) as exc:
        raise SourceError(f"cannot list input {uri}: {client_error_text(exc)}") from exc
    if not items:
        raise SourceError(f"input {uri} has no objects (wrong prefix?)")
    items.sort(key=lambda it: it.key)
    return Listing(source=uri, items=items)


def _manifest_label(record: dict[str, Any]) -> object:
    if "class" in record:
        return record["class"]
    for k, v in record.items():  # Ground Truth: "<job>-metadata": {"class-name": "cat"}
        if k.endswith("-metadata") and isinstance(v, dict) and "class-name" in v:
            return v["class-name"]
    return None


def list_manifest(uri: str, settings: Settings | None, threads: int = 8) -> Listing:
    """A JSON Lines manifest: one `{"source-ref": "s3://..." | "rel/path", "class": "..."}` a line.

    Local refs are resolved against the manifest's folder and must stay inside it.
    """
    data = read_bytes_whole(uri, settings)
    base = None if is_s3_uri(uri) else os.path.realpath(os.path.dirname(os.path.abspath(uri)))
    rows: list[tuple[int, RawItem | tuple[str, str | None, str]]] = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ref = record["source-ref"]
            if not isinstance(ref, str) or not ref:
                raise ValueError("source-ref is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            rows.append(
                (
                    n,
                    RawItem(
                        f"{uri}#L{n}",
                        None,
                        "",
                        -1,
                        "",
                        ("invalid_manifest_line", f"line {n}: {exc}"),
                    ),
                )
            )
            continue
        label = clean_label(_manifest_label(record))
        if is_s3_uri(ref):
            rows.append((n, (ref, label, ref)))
            continue
        if base is None or os.path.isabs(ref):
            rows.append(
                (
                    n,
                    RawItem(
                        ref,
                        None,
                        "",
                        -1,
                        "",
                        ("unsafe_key", "not an s3:// URI or a path relative to the manifest"),
                    ),
                )
            )
            continue
        real = os.path.realpath(os.path.join(base, ref))
        if os.path.commonpath([real, base]) != base:
            rows.append(
                (
                    n,
                    RawItem(
                        ref, None, "", -1, "", ("unsafe_key", "leads outside the manifest's folder")
                    ),
                )
            )
            continue
        rows.append((n, (ref, label, real)))
    client: Any = (
        make_client(settings)
        if any(not isinstance(r, RawItem) and is_s3_uri(r[2]) for _, r in rows)
        else None
    )

    def stat(row: tuple[int, RawItem | tuple[str, str | None, str]]) -> tuple[int, RawItem]:
        n, r = row
        if isinstance(r, RawItem):
            return n, r
        key, label, location = r
        try:
            if is_s3_uri(location):
                b, k = split_s3_uri(location)
                head = client.head_object(Bucket=b, Key=k)
                size, etag = int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')
            else:
                size, etag = sha256_file(location)
        except (ClientError, BotoCoreError, OSError) as exc:
            return n, RawItem(key, None, location, -1, "", ("unreadable", client_error_text(exc)))
        issue = None if label is not None else ("unknown_label", "missing or unusable class")
        return n, RawItem(key, label, location, size, etag, issue)

    stated = _bounded_map(stat, rows, threads)
    if not stated:
        raise SourceError(f"manifest {uri} has no entries")
    stated.sort(key=lambda t: (t[1].key, t[0]))
    return Listing(source=uri, items=[it for _, it in stated])
