"""Captured traffic of a time window, from an s3:// prefix or a folder in the capture layout
(inference/capture.py): only the hour folders the window touches are listed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from inference.capture import CapturedEvent, hour_prefix, iter_events
from pipelines.runner.transfer import list_objects
from pipelines.storage import is_s3_uri, split_s3_uri


def hours(start: datetime, end: datetime) -> Iterator[datetime]:
    at = start.replace(minute=0, second=0, microsecond=0)
    while at < end:
        yield at
        at += timedelta(hours=1)


def _files(
    root: str, endpoint: str, variant: str, start: datetime, end: datetime, s3: Any
) -> Iterator[str]:
    """The capture files of the window's hours, oldest first (s3:// URIs or paths)."""
    for hour in hours(start, end):
        prefix = hour_prefix(root, endpoint, variant, hour)
        if is_s3_uri(root):
            bucket = split_s3_uri(prefix)[0]
            names = sorted(o["Key"] for o in list_objects(s3, prefix))
            yield from (f"s3://{bucket}/{k}" for k in names if k.endswith(".jsonl"))
        else:
            folder = Path(prefix)
            if folder.is_dir():
                yield from (str(p) for p in sorted(folder.glob("*.jsonl")))


def _text(location: str, s3: Any) -> str:
    if is_s3_uri(location):
        bucket, key = split_s3_uri(location)
        return str(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8"))
    return Path(location).read_text(encoding="utf-8")


def load_baseline(uri: str, s3: Any = None) -> dict[str, Any]:
    """A baseline.json from an s3:// URI or a path."""
    import json

    return dict(json.loads(_text(uri, s3)))


def read_window(
    root: str, endpoint: str, variant: str, start: datetime, end: datetime, s3: Any = None
) -> Iterator[CapturedEvent | ValueError]:
    """Captured events with start <= time < end (a line that is not one: its ValueError)."""
    for location in _files(root, endpoint, variant, start, end, s3):
        for event in iter_events(_text(location, s3)):
            if isinstance(event, ValueError) or start <= event.time < end:
                yield event


def read_folder(
    folder: Path, start: datetime | None, end: datetime | None
) -> Iterator[CapturedEvent | ValueError]:
    """Every capture file under a folder (what Model Monitor downloads for its window)."""
    for path in sorted(folder.rglob("*.jsonl")):
        for event in iter_events(path.read_text(encoding="utf-8")):
            if isinstance(event, ValueError):
                yield event
            elif (start is None or event.time >= start) and (end is None or event.time < end):
                yield event
