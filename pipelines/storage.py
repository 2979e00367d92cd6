"""S3 clients built from `Settings`, and small helpers for `s3://` URIs.

All S3 access in `pipelines` goes through these factories, so the same code talks to AWS S3,
SeaweedFS or moto by endpoint URL alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from pipelines.settings import Settings

if TYPE_CHECKING:
    import s3fs

# Path-style addressing: SeaweedFS and moto do not serve virtual-hosted buckets on 127.0.0.1.
_BOTO_CONFIG = Config(
    s3={"addressing_style": "path"},
    retries={"max_attempts": 5, "mode": "standard"},
    connect_timeout=5,
    read_timeout=60,
    max_pool_connections=32,  # parallel transfers use up to 32 threads (runner, importers)
)


def is_s3_uri(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`)."""
    if not is_s3_uri(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    return {**settings.s3_client_kwargs(), "config": _BOTO_CONFIG}


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the configured endpoint and credentials."""
    return boto3.session.Session().client("s3", **_client_kwargs(settings))


def s3_filesystem(settings: Settings) -> s3fs.S3FileSystem:
    """An s3fs filesystem for the same endpoint and credentials (no instance caching)."""
    import s3fs  # heavy import, kept off module import

    kwargs = _client_kwargs(settings)
    client_kwargs: dict[str, Any] = {"region_name": kwargs["region_name"]}
    if "endpoint_url" in kwargs:
        client_kwargs["endpoint_url"] = kwargs["endpoint_url"]
    return s3fs.S3FileSystem(
        key=kwargs.get("aws_access_key_id"),
        secret=kwargs.get("aws_secret_access_key"),
        client_kwargs=client_kwargs,
        config_kwargs={"s3": {"addressing_style": "path"}},
        skip_instance_cache=True,
    )


def ensure_buckets(settings: Settings, buckets: tuple[str, ...] | None = None) -> None:
    """Create the project's buckets if they are missing (idempotent)."""
    client = s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets or settings.buckets:
        if bucket in existing:
            continue
        if settings.region == "us-east-1":
            client.create_bucket(Bucket=bucket)
        else:
            client.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": settings.region}
            )
