"""Build a definition with the SageMaker SDK without calling AWS, and the code bundle it needs.

Why: `Pipeline.definition()` of SDK v3 uploads local code (ModelTrainer's source folder and its
`sm_drivers`, processing inputs given as local paths) and, on the way, may look up the role,
the default bucket, SDK config files and send telemetry. Here every upload is *staged* instead:
`OfflinePipelineSession.upload_data` hashes what it is given and returns a content-addressed URI
`s3://<bucket>/<prefix>/code/<sha256[:16]>[/<file>]`; the bytes wait in a `CodeBundle` that
`pipelines.aws.upsert` (or the local runner) uploads. The same code gives the same URIs, so step
caching sees a code change exactly when the code changed. Any other AWS request made through the
session raises `OfflineCallError`.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

TRAIN_CODE_DIR = "/opt/ml/input/data/code"  # where SageMaker puts ModelTrainer's "code" channel
CODE_PACKAGES = ("pipelines", "training", "inference")  # copied whole into the bundle
STEP_SCRIPTS_DIR = "pipelines/steps"  # each <name>.py here is also copied to the bundle root
INFERENCE_HANDLER = "inference/handler.py"  # copied to the bundle root as handler.py
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_DIGEST_CHARS = 16  # 64 bits of sha256: collisions are not a practical concern for code versions


class OfflineCallError(RuntimeError):
    """An AWS request was attempted while building a definition offline."""


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
        return self.stage_files(_read_tree(path), path.name if path.is_file() else None)

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


def _read_tree(path: Path) -> dict[str, bytes]:
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
    """What the containers run, in the repo's layout plus root copies of the entry scripts.

    `/opt/ml/processing/input/code/<step>.py` and `/opt/ml/input/data/code/training/train.py`
    both see `pipelines/`, `training/` and `inference/` next to them (the script's folder is
    first on `sys.path`), so entry points import project modules unchanged.
    """
    files: dict[str, bytes] = {}
    for package in CODE_PACKAGES:
        pkg = source_root / package
        if pkg.is_dir():
            files.update({f"{package}/{rel}": data for rel, data in _read_tree(pkg).items()})
    steps = source_root / STEP_SCRIPTS_DIR
    for script in sorted(steps.glob("*.py")) if steps.is_dir() else []:
        if not script.name.startswith("_"):
            files[script.name] = script.read_bytes()
    handler = source_root / INFERENCE_HANDLER
    if handler.is_file():
        files["handler.py"] = handler.read_bytes()
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
    (tmp / "sourcedir.tar.gz").write_bytes(deterministic_targz(files))
    try:
        tmp.rename(staging_root / digest)
    except OSError:  # a concurrent build staged the same digest first: same bytes, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def deterministic_targz(files: dict[str, bytes]) -> bytes:
    """A tar.gz whose bytes depend only on the files (fixed mtimes, owners, order)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(files):
            info = tarfile.TarInfo(rel)
            info.size, info.mtime, info.mode = len(files[rel]), 0, 0o644
            tar.addfile(info, io.BytesIO(files[rel]))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


@contextlib.contextmanager
def offline_sdk(region: str) -> Iterator[None]:
    """Scope in which the SDK can be imported and a definition built with no network access.

    Importing `sagemaker.mlops` creates a boto3 client at import time (needs a region; without
    credentials boto3 would probe the EC2 metadata service), role validation calls IAM, and
    telemetry calls STS and an S3 URL. All of that is switched off here, and restored after.
    The SDK's import also calls `logging.basicConfig`; the root logger is given back as it was,
    and the SDK's loggers are quiet while building (they warn about every popped job name).
    Not thread-safe: it patches `os.environ` for its duration.
    """
    env = {"AWS_EC2_METADATA_DISABLED": "true", "SAGEMAKER_VALIDATE_ROLE": "false"}
    if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        env["AWS_DEFAULT_REGION"] = region
    with mock.patch.dict(os.environ, env), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Running within a PipelineSession, there will be No Wait"
        root_handlers, root_level = list(logging.root.handlers), logging.root.level
        import sagemaker.mlops.workflow  # noqa: F401  (the import with side effects)
        from sagemaker.core.telemetry import telemetry_logging

        logging.root.handlers[:] = root_handlers
        logging.root.setLevel(root_level)
        sdk_loggers = [
            lg
            for name, lg in logging.Logger.manager.loggerDict.items()
            if name.startswith("sagemaker") and isinstance(lg, logging.Logger)
        ]
        levels = [lg.level for lg in sdk_loggers]
        for lg in sdk_loggers:
            lg.setLevel(logging.ERROR)
        try:
            with mock.patch.object(telemetry_logging, "_send_telemetry_request", _no_telemetry):
                yield
        finally:
            for lg, level in zip(sdk_loggers, levels, strict=True):
                lg.setLevel(level)


def _portable_sm_drivers(files: dict[str, bytes]) -> dict[str, bytes]:
    """ModelTrainer's `sm_drivers/sourcecode.json` records the *local* source folder, which
    would make the bundle (and Train's cache key) differ per machine; the container reads only
    `entry_script` from it, so point `source_dir` at the code channel's container path."""
    if "sm_train.sh" not in files or "sourcecode.json" not in files:
        return files
    source_code = json.loads(files["sourcecode.json"])
    if source_code.get("source_dir"):
        source_code["source_dir"] = TRAIN_CODE_DIR
    return {**files, "sourcecode.json": json.dumps(source_code).encode()}


def _no_telemetry(*args: Any, **kwargs: Any) -> None:
    return None


def _refuse_call(event_name: str = "", **kwargs: Any) -> None:
    raise OfflineCallError(f"AWS call while building the pipeline definition offline: {event_name}")


@functools.cache
def _offline_boto_session(region: str) -> Any:
    """One boto3 session per region for all offline builds (it caches the multi-MB service
    models between builds); dummy credentials; it refuses every request."""
    import boto3

    session = boto3.session.Session(
        region_name=region, aws_access_key_id="offline", aws_secret_access_key="offline"
    )
    session.events.register("before-call", _refuse_call, unique_id="lepton-offline-refuse")
    return session


def offline_session(region: str, bucket: str, code_prefix: str) -> Any:
    """A `PipelineSession` that stages uploads into `.bundle` and refuses every AWS request.

    Call inside `offline_sdk()`.
    """
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    class OfflinePipelineSession(PipelineSession):
        def __init__(self) -> None:
            boto_session = _offline_boto_session(region)
            self.bundle = CodeBundle(bucket=bucket, prefix=code_prefix)
            # A non-empty config keeps SDK config files (and S3-hosted ones) out of the build;
            # emptied right after, because every lookup re-validates a non-empty config (~1 s).
            super().__init__(
                boto_session=boto_session,
                default_bucket=bucket,
                sagemaker_config={"SchemaVersion": "1.0"},
            )
            self.sagemaker_config: dict[str, Any] = {}

        def default_bucket(self) -> str:
            return bucket  # the base class would create the bucket if it were missing

        def upload_data(
            self,
            path: str,
            bucket: str | None = None,
            key_prefix: str = "data",
            callback: Any = None,
            extra_args: Any = None,
        ) -> str:
            if Path(path).is_file():
                return self.bundle.stage(path)
            return self.bundle.stage_files(_portable_sm_drivers(_read_tree(Path(path))))

    return OfflinePipelineSession()
