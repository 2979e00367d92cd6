"""Writing a dataset to a folder or an ``s3://`` prefix so it never looks complete early.

Order: remove any old ``manifest.json`` first (a half-rewritten folder must not pass for the old
dataset), then shards (each with its sha256), stale shards removed, ``quality_report.json``, and
``manifest.json`` last. For S3, files are staged in the scratch folder with the same writers
as the local case (same bytes), uploaded, and deleted from scratch one by one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.prepare.errors import OutputError
from pipelines.prepare.reading import make_client
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, split_s3_uri
from training.atomic import atomic_write_bytes
from training.shards import MANIFEST_NAME, write_manifest

REPORT_NAME = "quality_report.json"
_SHARD_RE = re.compile(r"^(train|val|test)-\d{5}\.(tar|npz)$")  # .npz: format_version 1


def json_bytes(obj: Any) -> bytes:
    """The project's JSON file format (same as training.shards.write_manifest)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _err(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        e = exc.response.get("Error", {})
        return f"{e.get('Code', '?')}: {e.get('Message', '') or exc}"
    return f"{type(exc).__name__}: {exc}"


class Destination:
    """A dataset folder or prefix."""

    def __init__(self, uri: str, settings: Settings | None, staging_dir: str) -> None:
        self.uri = uri
        self.is_s3 = is_s3_uri(uri)
        self.staging = Path(staging_dir)
        if self.is_s3:
            self.bucket, prefix = split_s3_uri(uri)
            self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
            self.client = make_client(settings)
        else:
            self.path = Path(uri)

    # -- reading ---------------------------------------------------------------------------
    def check_access(self) -> None:
        """Fail early (before any decoding) if the output is unusable."""
        if self.is_s3:
            try:
                self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
            except (ClientError, BotoCoreError) as exc:
                raise OutputError(f"cannot access output {self.uri}: {_err(exc)}") from exc
            return
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"output {self.uri!r} exists and is not a folder")
        probe = self.path
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK | os.X_OK):
            raise OutputError(f"output {self.uri!r} is not writable ({probe} is read-only)")

    def read_bytes(self, name: str) -> bytes | None:
        if self.is_s3:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)[
                    "Body"
                ].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise OutputError(f"cannot read {self.uri}/{name}: {_err(exc)}") from exc
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    def read_manifest(self) -> dict[str, Any] | None:
        raw = self.read_bytes(MANIFEST_NAME)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def existing_names(self) -> set[str]:
        if self.is_s3:
            names: set[str] = set()
            try:
                pages = self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
                )
                for page in pages:
                    names.update(o["Key"][len(self.prefix) :] for o in page.get("Contents", []))
            except (ClientError, BotoCoreError) as exc:
                raise OutputError(f"cannot list output {self.uri}: {_err(exc)}") from exc
            return names
        if not self.path.is_dir():
            return set()
        return {p.name for p in self.path.iterdir() if p.is_file()}

    # -- writing (in this order) -------------------------------------------------------------
    def begin(self) -> None:
        if self.is_s3:
            self._delete([MANIFEST_NAME])
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MANIFEST_NAME).unlink(missing_ok=True)

    def put_shard(self, name: str, data: bytes | bytearray) -> None:
        target = (self.staging if self.is_s3 else self.path) / name
        atomic_write_bytes(target, data)
        if self.is_s3:
            self._upload(target, name)

    def put_json(self, name: str, obj: Any) -> None:
        target = (self.staging if self.is_s3 else self.path) / name
        atomic_write_bytes(target, json_bytes(obj))
        if self.is_s3:
            self._upload(target, name)

    def remove_stale_shards(self, keep: set[str]) -> list[str]:
        stale = sorted(n for n in self.existing_names() if _SHARD_RE.match(n) and n not in keep)
        if self.is_s3:
            self._delete(stale)
        else:
            for n in stale:
                (self.path / n).unlink(missing_ok=True)
        return stale

    def put_manifest(self, manifest: dict[str, Any]) -> str:
        folder = self.staging if self.is_s3 else self.path
        sha = write_manifest(folder, manifest)
        if self.is_s3:
            self._upload(folder / MANIFEST_NAME, MANIFEST_NAME)
        return sha

    # -- S3 helpers ----------------------------------------------------------------------------
    def _upload(self, path: Path, name: str) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self.prefix + name)
        except (ClientError, BotoCoreError) as exc:
            raise OutputError(f"cannot write {self.uri}/{name}: {_err(exc)}") from exc
        except Exception as exc:  # boto3's S3UploadFailedError wraps the ClientError
            raise OutputError(f"cannot write {self.uri}/{name}: {exc}") from exc
        finally:
            path.unlink(missing_ok=True)

    def _delete(self, names: list[str]) -> None:
        for start in range(0, len(names), 1000):
            batch = [{"Key": self.prefix + n} for n in names[start : start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
            except (ClientError, BotoCoreError) as exc:
                raise OutputError(f"cannot delete from {self.uri}: {_err(exc)}") from exc
