"""The code bundle: what the step containers run, staged content-addressed.

The bundle is the project's packages (`pipelines/`, `training/`, `inference/`) in the repository
layout, plus `infra/image/requirements.txt` (the steps' environment). Entry points are modules (`python3 -m
pipelines.prepare.step` with the bundle on PYTHONPATH), so nothing edits `sys.path`.
`CodeBundle.stage*` returns content-addressed `s3://<bucket>/<prefix>/code/<sha256[:16]>` URIs:
the same code gives the same URIs, so step caching sees a code change exactly when the code
changed; the bytes wait in the bundle until `pipelines.aws.pipeline.upsert` (or the local
runner) uploads them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.definition.names import CODE_INPUT, IMAGE_REQUIREMENTS
from pipelines.imports import PROJECT_PACKAGES

_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_DIGEST_CHARS = 16  # 64 bits of sha256: collisions are not a practical concern for code versions


@dataclass
class CodeBundle:
    """S3 objects a definition references but nobody uploaded yet (key -> bytes)."""

    bucket: str
    prefix: str  # key prefix of the code objects, e.g. "pipeline/code"
    objects: dict[str, bytes] = field(default_factory=dict)
    roots: set[str] = field(default_factory=set)  # s3:// URI of each staged file or folder

    def stage(self, path: str | Path) -> str:
        """Stage a local file or folder; return its content-addressed s3:// URI."""
        path = Path(path)
        return self.stage_files(read_tree(path), path.name if path.is_file() else None)

    def stage_files(self, files: dict[str, bytes], file_name: str | None = None) -> str:
        """Stage a folder's files (relative path -> bytes), or one file when `file_name`."""
        digest = _tree_digest(files)[:_DIGEST_CHARS]
        root = f"{self.prefix}/{digest}" if self.prefix else digest
        for rel, data in files.items():
            self.objects[f"{root}/{rel}"] = data
        uri = f"s3://{self.bucket}/{root}" + (f"/{file_name}" if file_name else "")
        self.roots.add(uri)
        return uri

    def uris(self) -> list[str]:
        """The staged URIs, as the definition references them."""
        return sorted(self.roots)

    def upload(self, s3_client: Any, skip_existing: bool = True) -> int:
        """Put every object (skipping keys already there: content-addressed); returns the count."""
        count = 0
        for key, data in sorted(self.objects.items()):
            if skip_existing and _exists(s3_client, self.bucket, key):
                continue
            s3_client.put_object(Bucket=self.bucket, Key=key, Body=data)
            count += 1
        return count


def _exists(s3_client: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3_client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def read_tree(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    if not path.is_dir():
        raise FileNotFoundError(f"nothing to stage at {path}")
    out: dict[str, bytes] = {}
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        if file.is_file() and not _skipped(rel):
            out[rel.as_posix()] = file.read_bytes()
    return out


def _skipped(rel: Path) -> bool:
    return any(p in _SKIP_DIRS for p in rel.parts[:-1]) or rel.name.endswith(_SKIP_SUFFIXES)


def _tree_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return h.hexdigest()


def source_files(source_root: Path) -> dict[str, bytes]:
    """What the containers run: the project packages in the repo's layout and the image's
    requirements.txt."""
    files: dict[str, bytes] = {}
    for package in PROJECT_PACKAGES:
        pkg = source_root / package
        if pkg.is_dir():
            files.update({f"{package}/{rel}": data for rel, data in read_tree(pkg).items()})
    requirements = source_root / IMAGE_REQUIREMENTS
    if requirements.is_file():  # what the stock-image fallback installs, and the local runner
        files[IMAGE_REQUIREMENTS] = requirements.read_bytes()
    return files


def stage_source(source_root: Path, staging_root: Path | None = None) -> Path:
    """Write `source_files()` into a content-addressed folder (reused when it exists)."""
    files = source_files(source_root)
    digest = _tree_digest(files)[:_DIGEST_CHARS]
    staging_root = staging_root or Path(tempfile.gettempdir()) / f"lepton-code-{os.getuid()}"
    target = staging_root / digest / "code"
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=_mkdir(staging_root)))
    for rel, data in files.items():
        (tmp / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "code" / rel).write_bytes(data)
    try:
        tmp.rename(staging_root / digest)
    except OSError:  # a concurrent build staged the same digest first: same bytes, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def code_bundle_uri(definition: Mapping[str, Any]) -> str:
    """The s3:// URI of the code bundle the definition's processing steps mount."""
    pending = list(definition["Steps"])
    while pending:
        step = pending.pop(0)
        args = step.get("Arguments", {})
        if step["Type"] == "Condition":
            pending += args.get("IfSteps", []) + args.get("ElseSteps", [])
        for item in args.get("ProcessingInputs", []):
            if item.get("InputName") == CODE_INPUT:
                return str(item["S3Input"]["S3Uri"])
    raise ValueError("the definition has no code bundle input")
