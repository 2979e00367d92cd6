"""Listing raw inputs: a local ImageFolder, an ``s3://`` prefix, a JSON Lines manifest.

A listing is small metadata only (key, label, size, ETag or content hash); bytes are read
later, by the decode workers (`pipelines.prepare.reading`), which compare what they read with
what was listed so an object replaced in between is detected and reported instead of silently
mixing two versions into one dataset.

Keys are only ever *reported*; nothing here turns a key into an output path, so ``../``,
absolute paths or odd Unicode cannot escape the output folder. Labels are validated (see
`clean_label`); a bad one quarantines the file as ``unknown_label``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing as mp
import os
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _encode_ascii  # type: ignore[attr-defined]
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.prepare.errors import SourceError
from pipelines.prepare.reading import client_error_text, make_client, read_bytes_whole
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, split_s3_uri

T = TypeVar("T")
R = TypeVar("R")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_LABEL_MAX_CHARS = 200
PARALLEL_LISTING = 20_000  # local files from which listing hashes on a process pool


@dataclass(frozen=True, slots=True)
class RawItem:
    """One listed input file: where it is, its label, and what the listing saw."""

    key: str  # reported name: path relative to the input root, or the manifest's source-ref
    label: str | None  # cleaned class name; None when there is none or it is invalid
    location: str  # absolute local path or s3:// URI
    size: int  # bytes, as listed (-1 when unknown)
    etag: str  # S3 ETag without quotes, or "sha256:<hex>" of a local file's content
    issue: tuple[str, str] | None = None  # (reason, detail) known before reading


@dataclass
class Listing:
    """Everything found under an input, sorted by key (ties by position)."""

    source: str
    items: list[RawItem] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 over (key, label, size, etag) of every item: changes iff the raw data does."""
        digest = hashlib.sha256()
        for start in range(0, len(self.items), _FINGERPRINT_BLOCK):
            block = self.items[start : start + _FINGERPRINT_BLOCK]
            digest.update("".join(map(_fingerprint_line, block)).encode())
        return digest.hexdigest()


_FINGERPRINT_BLOCK = 65536  # rows hashed at a time (~6 MB of text)


def _json(text: str | None) -> str:
    return "null" if text is None else _encode_ascii(text)


def _fingerprint_line(it: RawItem) -> str:
    """`json.dumps([key, label, size, etag, reason], ensure_ascii=True) + "\n"`, the row the
    fingerprint has always hashed, built from json's own string encoder: 3x faster."""
    reason = it.issue[0] if it.issue else None
    if type(it.size) is not int:  # never from a listing; kept exact all the same
        return json.dumps([it.key, it.label, it.size, it.etag, reason]) + "\n"
    return f"[{_json(it.key)}, {_json(it.label)}, {it.size}, {_json(it.etag)}, {_json(reason)}]\n"


def clean_label(raw: object) -> str | None:
    """NFC-normalised class name, or None if it cannot be one (empty, '.', '..', a separator,
    control or format characters, surrounding whitespace, too long)."""
    if not isinstance(raw, str):
        return None
    label = unicodedata.normalize("NFC", raw)
    if label in ("", ".", "..") or label != label.strip() or len(label) > _LABEL_MAX_CHARS:
        return None
    if "/" in label or "\\" in label:
        return None
    if any(unicodedata.category(ch)[0] == "C" for ch in label):  # Cc, Cf, Cs, Co, Cn
        return None
    return label


def has_image_extension(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------
def list_source(
    uri: str, settings: Settings | None, threads: int = 8, hash_content: bool = True
) -> Listing:
    """List an input: `*.jsonl` -> manifest; `s3://...` -> prefix; else a local folder
    (content-hashed unless `hash_content` is False: then its files carry no etag)."""
    if uri.rstrip("/").endswith(".jsonl"):
        return list_manifest(uri.rstrip("/"), settings, threads)
    if is_s3_uri(uri):
        return list_s3_prefix(uri, settings)
    # Local disks: one thread hashes small files fastest (threads only add GIL contention).
    return list_local_folder(uri, hash_content=hash_content)


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


def _sha256_file(path: str) -> tuple[int, str]:
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size <= 1 << 20:  # the common case: one read
            data = fh.read()
            return len(data), "sha256:" + hashlib.sha256(data).hexdigest()
        digest = hashlib.file_digest(fh, "sha256")
        return fh.tell(), "sha256:" + digest.hexdigest()


@functools.lru_cache(maxsize=65536)
def _folder_label(folder: str) -> str | None:
    """`clean_label` of a class folder's name, interned: computed once per folder, not per file
    (a third of listing a small file)."""
    label = clean_label(folder)
    return sys.intern(label) if label is not None else None


def _item_from_key(key: str, location: str, size: int, etag: str) -> RawItem:
    """ImageFolder rule: the first path component of `key` is the label."""
    parts = key.split("/")
    if len(parts) < 2:
        return RawItem(
            key, None, location, size, etag, ("unknown_label", "not inside a class folder")
        )
    label = _folder_label(parts[0])
    # a valid label is none of "", "." and "..", so looking for them in every part is enough
    if label is None or "" in parts or "." in parts or ".." in parts:
        return RawItem(
            key,
            None,
            location,
            size,
            etag,
            ("unknown_label", f"unusable class folder or path {parts[0]!r}"),
        )
    return RawItem(key, label, location, size, etag)


def _escapes(real_top: str, key: str, path: str) -> RawItem | None:
    """The quarantine entry of a symlink leading outside the input; None if it stays inside."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, real_top]) != real_top:
        return RawItem(key, None, path, -1, "", ("unsafe_key", "symlink leads outside the input"))
    return None


def listed_item(real_top: str, entry: tuple[str, str]) -> RawItem:
    """One listed local file, content-hashed, or quarantined if unsafe or unreadable; an empty
    path is a symlinked folder."""
    key, path = entry
    if not path:
        return RawItem(key, None, "", -1, "", ("unsafe_key", "symlinked folder, not followed"))
    if os.path.islink(path) and (outside := _escapes(real_top, key, path)) is not None:
        return outside
    try:
        size, etag = _sha256_file(path)
    except OSError as exc:
        return RawItem(key, None, path, -1, "", ("unreadable", str(exc)))
    return _item_from_key(key, path, size, etag)


def _sized_item(real_top: str, key: str, entry: os.DirEntry[str]) -> RawItem:
    """What `listed_item` records for a directory entry, less the content hash: its type came
    with the folder's listing, so a file costs one stat instead of an lstat and a stat."""
    if _is_link(entry) and (outside := _escapes(real_top, key, entry.path)) is not None:
        return outside
    try:
        size = entry.stat().st_size
    except OSError as exc:
        return RawItem(key, None, entry.path, -1, "", ("unreadable", str(exc)))
    return _item_from_key(key, entry.path, size, "")


def _is_link(entry: os.DirEntry[str]) -> bool:
    """`os.path.islink` of a directory entry: False when its type cannot be known."""
    try:
        return entry.is_symlink()
    except OSError:
        return False


def _walk(top: str) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
    """(key, entry) of every file under `top`, and (key + "/", None) of every symlinked folder
    (not followed); what `os.walk(top, followlinks=False)` finds, without its own stat calls.
    OSError if a folder cannot be read."""
    stack = [("", top)]
    while stack:
        rel, folder = stack.pop()
        with os.scandir(folder) as found:
            for entry in found:
                try:
                    is_dir = entry.is_dir()
                except OSError:  # as os.walk: an entry whose type cannot be known is a file
                    is_dir = False
                if not is_dir:
                    yield rel + entry.name, entry
                elif _is_link(entry):
                    yield rel + entry.name + "/", None
                else:
                    stack.append((rel + entry.name + "/", entry.path))


def list_local_folder(root: str, hash_content: bool = True) -> Listing:
    """Every file under a local folder, content-hashed (so the fingerprint survives a copy, e.g.
    SageMaker downloading the input afresh) unless `hash_content` is False (sized only).
    Symlinks leading outside are quarantined; symlinked folders are reported, not followed."""
    top = os.path.abspath(root)
    if not os.path.isdir(top):
        raise SourceError(f"input folder {root!r} does not exist or is not a folder")
    real_top = os.path.realpath(top)
    found: list[tuple[str, str]] = []
    items: list[RawItem] = []
    try:
        for key, entry in _walk(top):
            if entry is None:
                items.append(listed_item(real_top, (key, "")))
            elif hash_content:
                found.append((key, entry.path))
            else:
                items.append(_sized_item(real_top, key, entry))
    except OSError as exc:
        raise SourceError(f"cannot read input folder {root!r}: {exc}") from exc
    if not found and not items:
        raise SourceError(f"input folder {root!r} has no files")

    hash_one = functools.partial(listed_item, real_top)
    if len(found) >= PARALLEL_LISTING and "fork" in mp.get_all_start_methods():
        # many files: hash on every core (one process is ~3 min for 1,000,000 small files)
        with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
            items.extend(pool.map(hash_one, found, chunksize=2048))
    else:
        items.extend(map(hash_one, found))
    del found
    items.sort(key=lambda it: it.key)
    return Listing(source=root, items=items)


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
                items.append(_item_from_key(key, location, int(obj.get("Size", 0)), etag))
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
        if any(isinstance(r, tuple) and is_s3_uri(r[2]) for _, r in rows)
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
                size, etag = _sha256_file(location)
        except (ClientError, BotoCoreError, OSError) as exc:
            return n, RawItem(key, None, location, -1, "", ("unreadable", client_error_text(exc)))
        issue = None if label is not None else ("unknown_label", "missing or unusable class")
        return n, RawItem(key, label, location, size, etag, issue)

    stated = _bounded_map(stat, rows, threads)
    if not stated:
        raise SourceError(f"manifest {uri} has no entries")
    stated.sort(key=lambda t: (t[1].key, t[0]))
    return Listing(source=uri, items=[it for _, it in stated])
