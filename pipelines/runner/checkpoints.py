"""Checkpoints reach S3 while a training job runs, as SageMaker's checkpoint sync does.

`CheckpointSync` mirrors the job's local checkpoint folder to the CheckpointConfig's S3 URI every
few seconds and once more when the job ends, failed or not; files still being written (the
atomic writer's hidden `.tmp` files) are left for the next pass. So a job that fails or is
interrupted resumes in its next attempt from the newest checkpoint that reached S3, even when
the local folder is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from pipelines.storage import split_s3_uri

Printer = Callable[[str], None]


def _settled(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime) of the finished files under `folder`."""
    out: dict[str, tuple[int, int]] = {}
    for path in folder.rglob("*") if folder.is_dir() else []:
        if path.is_file() and not path.name.startswith(".") and not path.name.endswith(".tmp"):
            stat = path.stat()
            out[path.relative_to(folder).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return out


class CheckpointSync:
    def __init__(
        self, s3: Any, folder: Path, uri: str, interval_s: float = 5.0, echo: Printer = print
    ) -> None:
        self.s3, self.folder, self.interval_s, self.echo = s3, folder, interval_s, echo
        self.bucket, prefix = split_s3_uri(uri)
        self.prefix = prefix.rstrip("/")
        # what the folder holds at the start came from the URI (restored): not sent back
        self.uploaded: dict[str, tuple[int, int]] = _settled(folder)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-sync", daemon=True)
        self.uploads = 0  # files put so far (for progress lines and tests)

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def sync(self) -> None:
        """One pass: upload new and changed files, delete the keys of removed ones."""
        now = _settled(self.folder)
        for rel, stamp in sorted(now.items()):
            if self.uploaded.get(rel) != stamp:
                self.s3.upload_file(str(self.folder / rel), self.bucket, self._key(rel))
                self.uploaded[rel] = stamp
                self.uploads += 1
        for rel in sorted(set(self.uploaded) - set(now)):
            self.s3.delete_object(Bucket=self.bucket, Key=self._key(rel))
            del self.uploaded[rel]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - a failed pass is retried by the next one
                self.echo(f"checkpoint sync: {exc} (retrying)")

    def __enter__(self) -> CheckpointSync:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.sync()  # the last checkpoints, also (above all) when the job failed
