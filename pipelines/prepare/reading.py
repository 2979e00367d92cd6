"""Reading raw inputs: the bytes of a listed item (checked against what its listing saw), or
of a small whole file, from a local path or ``s3://``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from pipelines.prepare.errors import SourceError
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, s3_client, split_s3_uri

if TYPE_CHECKING:
    from pipelines.prepare.items import RawItem


class ObjectChanged(RuntimeError):
    """An object's content differs from what the listing recorded."""


class TooLarge(OSError):
    """A file over the byte limit, found by its reader (a listing by name gives no sizes)."""


def too_large_detail(size: int, limit: int) -> str:
    """The quarantine detail of a file over `max_file_bytes`, whoever finds it."""
    return f"{size} bytes > max_file_bytes {limit}"


def client_error_text(exc: Exception) -> str:
    """A boto error (or any other) as one short line: `Code: message`."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '') or exc}"
    return f"{type(exc).__name__}: {exc}"


def make_client(settings: Settings | None) -> Any:
    """An S3 client for `settings`; None means boto3's default chain and region (a step in a
    container, given AWS_ENDPOINT_URL_S3 and keys by the local runner or its role on AWS)."""
    if settings is None:
        region = boto3.session.Session().region_name or Settings().region
        settings = Settings(mode="aws", region=region)
    return s3_client(settings)


def read_bytes_whole(uri: str, settings: Settings | None) -> bytes:
    """A small whole file (a manifest) from a path or s3:// URI; SourceError if unreadable."""
    try:
        if is_s3_uri(uri):
            b, k = split_s3_uri(uri)
            return make_client(settings).get_object(Bucket=b, Key=k)["Body"].read()
        return Path(uri).read_bytes()
    except (ClientError, BotoCoreError, OSError) as exc:
        raise SourceError(f"cannot read {uri}: {client_error_text(exc)}") from exc


def checked_sha256(item: RawItem) -> bytes | None:
    """The sha256 `read_item` checks a local file's bytes against (its listing hashed them),
    so a caller holding the bytes it returned need not hash them again; None for S3 objects."""
    if is_s3_uri(item.location) or not item.etag.startswith("sha256:"):
        return None
    return bytes.fromhex(item.etag[len("sha256:") :])


def read_local(path: str, size_hint: int = -1, max_bytes: int | None = None) -> bytes:
    """A local file's bytes, all of them, whatever its size now; `size_hint` (its listed size)
    makes the common case one read. Unlisted (-1), the size comes from fstat on the open file
    (~0.5 us, against ~5 us for the listing's stat by path), and a file over `max_bytes` is
    TooLarge, unread. Plain descriptor calls: a file object's buffer, isatty and seek cost as
    much as reading a small image (~10 against ~6.5 us)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if size_hint < 0:
            size_hint = os.fstat(fd).st_size
            if max_bytes is not None and size_hint > max_bytes:
                raise TooLarge(too_large_detail(size_hint, max_bytes))
        parts = [os.read(fd, size_hint + 1)]
        while parts[-1]:  # until end of file: the file may have grown since it was listed
            parts.append(os.read(fd, _READ_BLOCK))
        return parts[0] if len(parts) == 2 else b"".join(parts)
    finally:
        os.close(fd)


_READ_BLOCK = 1 << 20


def read_item(item: RawItem, client: Any, max_bytes: int | None = None) -> bytes:
    """The item's bytes; ObjectChanged if they are not what the listing saw, OSError if gone,
    TooLarge if an unlisted local file is over `max_bytes` (a listed size was screened)."""
    if is_s3_uri(item.location):
        b, k = split_s3_uri(item.location)
        try:
            resp = client.get_object(Bucket=b, Key=k)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise ObjectChanged(f"deleted after listing (ETag {item.etag})") from exc
            raise OSError(client_error_text(exc)) from exc
        etag = str(resp.get("ETag", "")).strip('"')
        if item.etag and etag != item.etag:
            raise ObjectChanged(f"ETag was {item.etag} when listed, {etag} when read")
        return resp["Body"].read()
    try:
        data = read_local(item.location, item.size, max_bytes)
    except FileNotFoundError as exc:
        raise ObjectChanged("deleted after listing") from exc
    if item.etag:
        now = "sha256:" + hashlib.sha256(data).hexdigest()
        if now != item.etag:
            raise ObjectChanged(
                f"content hash was {item.etag[7:19]}… when listed, {now[7:19]}… when read"
            )
    return data
