"""Build a definition with the SageMaker SDK without calling AWS.

Why: `Pipeline.definition()` of SDK v3 uploads local code (ModelTrainer's source folder and its
`sm_drivers`, processing inputs given as local paths) and, on the way, may look up the role,
the default bucket, SDK config files and send telemetry. Here every upload is *staged* instead,
into a `CodeBundle` (pipelines/definition/bundle.py), and any other AWS request made through
the session raises `OfflineCallError`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.definition.bundle import CodeBundle, read_tree
from pipelines.definition.names import TRAIN_CODE_DIR


class OfflineCallError(RuntimeError):
    """An AWS request was attempted while building a definition offline."""


@contextlib.contextmanager
def _environment(changes: dict[str, str]) -> Iterator[None]:
    """`os.environ` with `changes` applied for the block, restored after."""
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`owner.name` is `value` for the block, restored after."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


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
    # botocore reads AWS_DEFAULT_REGION, the SDK and our settings AWS_REGION: set both, to the
    # region being built for (with only AWS_REGION set, botocore found no region at all).
    env["AWS_DEFAULT_REGION"] = env["AWS_REGION"] = region
    with _environment(env), warnings.catch_warnings():
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
            with _replaced(telemetry_logging, "_send_telemetry_request", _no_telemetry):
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
            return self.bundle.stage_files(_portable_sm_drivers(read_tree(Path(path))))

    return OfflinePipelineSession()
