"""Batch inference: every image under an input prefix (or folder) classified by one model.

Output layout (SageMaker Batch Transform's): for each input object `<key>` one output object
`<key>.out` under the output prefix, holding a JSON Lines record: `{"key", "label", "score",
"top_k": [{"label", "score"}, ...], "model"}`, or for a file that is not a usable image
`{"key", "error", "detail", "model"}` (reported per key; the job goes on). Per-object outputs
rather than one file: a rerun sees at a glance what is done (keys with an `.out` are skipped),
and a consumer reads the answer of one image without scanning the rest. `_batch_report.json`
beside them counts what happened.

Each worker process (one per core by default) takes a chunk of `batch_size` keys and does all
of it: reads and decodes them exactly as the endpoint does (inference.preprocess), classifies
them in one model call (ONNX Runtime, one thread per worker, so the workers fill the cores), and
writes their results. The parent only lists, hands out chunks (a bounded window of them:
memory stays flat however large the input) and reports progress.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.batch.config import BatchConfig
from pipelines.prepare.items import RawItem, has_image_extension
from pipelines.prepare.reading import make_client, read_item
from pipelines.prepare.sources import list_source
from pipelines.progress import Progress
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, split_s3_uri

Log = Callable[[str], None]
OUT_SUFFIX = ".out"
REPORT = "_batch_report.json"


class BatchError(RuntimeError):
    """The job did not write every result; the message says how many and what to do."""


@dataclass
class BatchReport:
    total: int = 0  # objects under the input
    skipped: int = 0  # already had an .out (an earlier run)
    predicted: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "skipped": self.skipped,
            "predicted": self.predicted,
            "failed": len(self.failed),
            "failures": self.failed[:100],
            "images_per_s": round(self.predicted / self.seconds, 1) if self.seconds else 0.0,
        }


# ---- the workers (module-level: they run in other processes) ---------------------------------
_WORKER: dict[str, Any] = {}
Failure = dict[str, str]


def _init_worker(cfg: BatchConfig, model_dir: str, settings: Settings | None) -> None:
    from inference.predictor import Predictor

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    predictor = Predictor.load(model_dir, threads=1, max_pixels=cfg.max_pixels, top_k=cfg.top_k)
    _WORKER.update(
        cfg=cfg,
        client=make_client(settings),
        predictor=predictor,
        out=Output(cfg.output, settings, threads=4),
        readers=ThreadPoolExecutor(8),
        model=cfg.model_version or cfg.model,
    )


def _fetch(item: RawItem) -> bytes | tuple[str, str]:
    """The object's bytes, or (error reason, detail) of an object that is no usable input.
    Runs on the worker's reader threads: reads (S3 GETs, file opens) overlap."""
    # Any layout is fine here: a key outside a class folder is no error for batch inference.
    if item.issue is not None and item.issue[0] != "unknown_label":
        return item.issue
    if not has_image_extension(item.key):
        return "unknown_extension", "not .png/.jpg/.jpeg/.webp/.bmp"
    try:
        return read_item(item, _WORKER["client"])
    except Exception as exc:  # noqa: BLE001 - one bad object never stops the job
        return "unreadable", str(exc)[:200]


def _decode(data: bytes | tuple[str, str]) -> tuple[np.ndarray | None, str, str]:
    """(pixels or None, error reason, detail), decoded exactly as the endpoint decodes."""
    from inference.preprocess import ImageRejected

    if isinstance(data, tuple):
        return None, data[0], data[1]
    try:
        return _WORKER["predictor"].preprocess(data), "", ""
    except ImageRejected as exc:
        return None, exc.reason, exc.detail
    except Exception as exc:  # noqa: BLE001 - one bad object never stops the job
        return None, "unreadable", str(exc)[:200]


def _run_chunk(items: list[RawItem]) -> tuple[int, list[Failure]]:
    """Classify one chunk and write its results; returns (classified, failures)."""
    cfg: BatchConfig = _WORKER["cfg"]
    predictor, out, model = _WORKER["predictor"], _WORKER["out"], _WORKER["model"]
    keys: list[str] = []
    arrays: list[np.ndarray] = []
    failures: list[Failure] = []
    for item, data in zip(items, _WORKER["readers"].map(_fetch, items), strict=True):
        pixels, reason, detail = _decode(data)
        if pixels is None:
            failures.append({"key": item.key, "reason": reason, "detail": detail})
            out.put(
                item.key + OUT_SUFFIX,
                _record(item.key, {"error": reason, "detail": detail, "model": model}),
            )
        else:
            keys.append(item.key)
            arrays.append(pixels)
    if keys:
        probs = predictor.predict_arrays(np.stack(arrays))
        for key, top in zip(keys, predictor.top_k_labels(probs, cfg.top_k), strict=True):
            answer = {
                "label": top[0][0],
                "score": top[0][1],
                "top_k": [{"label": lab, "score": score} for lab, score in top],
                "model": model,
            }
            out.put(key + OUT_SUFFIX, _record(key, answer))
    # The previous chunk's writes are awaited (their errors raised) while this chunk's go on
    # behind the next one; a worker's last chunk is written before its process exits, and the
    # parent checks at the end that every result is there.
    out.settle()
    return len(keys), failures


# ---- output ------------------------------------------------------------------------------------
class Output:
    """Where `<key>.out` objects go: a folder or an s3:// prefix. Writes go to a thread pool
    (PUT latency, and file creation, which costs ~1 ms on some file systems, overlap)."""

    def __init__(self, uri: str, settings: Settings | None, threads: int = 16) -> None:
        self.uri = uri.rstrip("/")
        self.s3 = make_client(settings) if is_s3_uri(uri) else None
        self.pool = ThreadPoolExecutor(threads)
        self.pending: list[Future[None]] = []
        self.settling: list[Future[None]] = []
        self.folders: set[Path] = set()

    def done_keys(self) -> set[str]:
        if self.s3 is None:
            root = Path(self.uri)
            if not root.is_dir():
                return set()
            return {
                p.relative_to(root).as_posix().removesuffix(OUT_SUFFIX)
                for p in root.rglob(f"*{OUT_SUFFIX}")
            }
        from pipelines.runner.transfer import list_objects

        prefix = split_s3_uri(self.uri + "/")[1]
        return {
            o["Key"][len(prefix) :].removesuffix(OUT_SUFFIX)
            for o in list_objects(self.s3, self.uri + "/")
            if o["Key"].endswith(OUT_SUFFIX)
        }

    def put(self, rel: str, body: bytes) -> None:
        if self.s3 is None:
            folder = (Path(self.uri) / rel).parent
            if folder not in self.folders:  # once per folder, not per file
                folder.mkdir(parents=True, exist_ok=True)
                self.folders.add(folder)
        self.pending.append(self.pool.submit(self._write, rel, body))
        if len(self.pending) > 4096:
            self.flush()

    def _write(self, rel: str, body: bytes) -> None:
        if self.s3 is None:
            path = Path(self.uri) / rel
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(body)
            tmp.replace(path)  # an .out is whole or absent: a rerun never trusts half a file
            return
        bucket, prefix = split_s3_uri(self.uri + "/")
        self.s3.put_object(Bucket=bucket, Key=prefix + rel, Body=body)

    def settle(self) -> None:
        """Wait for the writes queued before the last settle(); the newer ones keep going."""
        earlier, self.settling, self.pending = self.settling, self.pending, []
        for future in earlier:
            future.result()

    def flush(self) -> None:
        """Wait for every write."""
        pending, self.settling, self.pending = self.settling + self.pending, [], []
        for future in pending:
            future.result()


def _record(key: str, body: dict[str, Any]) -> bytes:
    return (json.dumps({"key": key, **body}, ensure_ascii=False) + "\n").encode()


def run_batch(cfg: BatchConfig, settings: Settings | None = None, log: Log = print) -> BatchReport:
    """Classify what the output does not hold yet; returns the counts (also in the output)."""
    from inference.predictor import Predictor

    started = time.perf_counter()
    # Loaded here once: a bad model fails before any worker starts, and a tarball is
    # extracted once for all of them (the folder lives as long as this predictor).
    predictor = Predictor.load(cfg.model, max_pixels=cfg.max_pixels, top_k=cfg.top_k)
    out = Output(cfg.output, settings)
    listing = list_source(cfg.input, settings, names_only=True)
    items = [it for it in listing.items if not it.key.endswith("/")]
    done = out.done_keys()
    todo = [it for it in items if it.key not in done]
    report = BatchReport(total=len(items), skipped=len(items) - len(todo))
    workers = max(1, min(cfg.workers or os.cpu_count() or 1, -(-len(todo) // cfg.batch_size)))
    log(
        f"batch: {len(items)} objects under {cfg.input}, {report.skipped} done before, "
        f"{len(todo)} to classify with {cfg.model_version or cfg.model} ({workers} workers)"
    )
    progress = Progress(log, "batch:", len(todo), "images", quiet_if_short=True)
    if todo:
        with ProcessPoolExecutor(
            workers,
            mp_context=_context(),
            initializer=_init_worker,
            initargs=(cfg, str(predictor.model_dir), settings),
        ) as pool:
            for predicted, failures in _bounded(pool, todo, cfg.batch_size, 2 * workers):
                report.predicted += predicted
                report.failed.extend(failures)
                finished = report.predicted + len(report.failed)
                progress.update(finished, f", {len(report.failed)} failed")
    predictor.close()
    report.seconds = time.perf_counter() - started
    missing = {it.key for it in todo} - out.done_keys()
    if missing:  # a write failed after its chunk was counted: say so; a rerun redoes them
        raise BatchError(
            f"{len(missing)} results were not written (e.g. {sorted(missing)[:3]}); "
            "run again: keys with a result are skipped"
        )
    out.put(REPORT, json.dumps(report.as_dict(), indent=1).encode())
    out.flush()
    log(
        f"batch: done, {report.predicted} classified, {len(report.failed)} failed, "
        f"{report.skipped} skipped, {report.as_dict()['images_per_s']} images/s"
    )
    return report


def _context() -> Any:
    """Workers fork from a server process that imported this module once (fast starts, and no
    fork of this process's live ONNX Runtime session and threads)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _bounded(
    pool: ProcessPoolExecutor, items: Sequence[RawItem], chunk: int, window: int
) -> Iterator[tuple[int, list[Failure]]]:
    """Results of `_run_chunk` over `items` in chunks, at most `window` chunks in flight."""
    starts = iter(range(0, len(items), chunk))
    flight: list[Future[tuple[int, list[Failure]]]] = []
    for start in starts:
        flight.append(pool.submit(_run_chunk, list(items[start : start + chunk])))
        if len(flight) >= window:
            yield flight.pop(0).result()
    for future in flight:
        yield future.result()
