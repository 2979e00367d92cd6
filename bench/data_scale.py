"""Data at scale (not a test). Prints progress to stderr and one JSON object as the last line.

1. Makes a synthetic ImageFolder of small RGB PNGs (smooth gradients plus noise, 10 classes;
   nothing downloaded) and prepares it with 2 workers (``python -m pipelines.prepare.step`` in
   a child process): images/s and peak RSS of every process.
2. Streams one epoch of the train split on 2 ranks (two processes, each a training.stream
   loader over its share with one decode worker, as a 2-process job would): images/s and peak
   RSS per process, side by side with a plain loop over the same shards (one process: read,
   verify, parse, decode; nothing else). The ratio is streamed / plain.
3. With a local object store (``lepton services up``; LEPTON_* settings): uploads
   ``--fetch-objects`` small objects and downloads them with the runner's input transfer
   (pipelines/runner/transfer.py), objects/s, beside boto3's 32 threads on a slice of them,
   and the same download into /dev/shm: creating each file costs more on some disks than the
   rest of the client's work, so the tmpfs rate is the code's own. It runs first, before the
   other phases make and delete a million files, and names the disk's file system (ext4
   without a journal makes files slowly for minutes after many are deleted: `filesystem_of`).

Load average is recorded with every figure: the machine is shared.

    .venv/bin/python bench/data_scale.py [--images 1000000] [--fetch-objects 100000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.prepare import prepare_command  # noqa: E402
from training.wds import encode_png  # noqa: E402


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def synthetic_image(i: int, size: int) -> np.ndarray:
    """A smooth colour gradient plus noise, different per index (compresses like a photo)."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:size, 0:size]
    slope = rng.integers(-12, 12, (2, 3))
    base = rng.integers(0, 256, 3) + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    return np.clip(base + rng.integers(0, 24, (size, size, 3)), 0, 255).astype(np.uint8)


def _write_range(args: tuple[Path, int, int, int]) -> None:
    root, start, stop, size = args
    for i in range(start, stop):
        (root / f"c{i % 10}" / f"{i:07d}.png").write_bytes(encode_png(synthetic_image(i, size)))


def make_raw(root: Path, n: int, size: int) -> float:
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    step = 10_000
    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_range, [(root, s, min(s + step, n), size) for s in range(0, n, step)])
    return time.perf_counter() - t0


def watch(procs: list[subprocess.Popen[str]]) -> dict[str, int]:
    """Wait for the processes, sampling every process of their trees every 50 ms: peak RSS of
    the largest single process, and of each top process."""
    peak_any = 0
    peak_top = [0] * len(procs)
    while any(p.poll() is None for p in procs):
        for k, proc in enumerate(procs):
            try:
                top = psutil.Process(proc.pid)
                tree = [top, *top.children(recursive=True)]
                rss = [p.memory_info().rss for p in tree]
            except psutil.Error:
                continue
            peak_top[k] = max(peak_top[k], rss[0])
            peak_any = max(peak_any, *rss)
        time.sleep(0.05)
    return {"peak_rss_any_process": peak_any, "peak_rss_top": max(peak_top)}


def bench_prepare(raw: Path, out: Path, scratch: Path, n: int, size: int) -> dict[str, Any]:
    cmd = prepare_command(raw, out, str(size), 2, scratch)
    before = load()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peaks = watch([proc])
    seconds = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed:\n{err[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    shards = manifest["shards"]
    result = {
        "images": n,
        "workers": 2,
        "seconds": round(seconds, 1),
        "images_per_s": round(n / seconds, 1),
        "shards": len(shards),
        "dataset_bytes": sum(s["bytes"] for s in shards),
        "peak_rss_main_bytes": peaks["peak_rss_top"],
        "peak_rss_any_process_bytes": peaks["peak_rss_any_process"],
        "loadavg_before": before,
        "loadavg_after": load(),
    }
    log(f"prepare: {result}")
    return result


def stream_rank(dataset: str, rank: int, world: int, batch: int, workers: int) -> None:
    """One rank's epoch (run as a child process); prints JSON."""
    from training.shards import read_manifest
    from training.stream import ShardStream, StreamLoader, StreamSpec

    manifest = read_manifest(dataset)
    spec = StreamSpec(dataset, manifest, "train", batch, True, 0, 2048, world, rank, workers)
    loader = StreamLoader(ShardStream(spec))
    loader.sampler.set_epoch(0)  # type: ignore[attr-defined]
    t0, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    print(json.dumps({"rank": rank, "images": n, "seconds": time.perf_counter() - t0}))


def plain_loop(dataset: Path) -> tuple[int, float]:
    """Read, verify, parse and decode every train shard in one process: the baseline."""
    from training.shards import Decoder, read_manifest, read_shard, shard_samples, split_shards

    manifest = read_manifest(dataset)
    decode = Decoder(manifest)
    t0, n = time.perf_counter(), 0
    for entry in split_shards(manifest, "train"):
        for sample in shard_samples(read_shard(dataset, entry), entry, verified=True):
            decode(sample, entry["file"])
            n += 1
    return n, time.perf_counter() - t0


def bench_stream(dataset: Path, world: int = 2, batch: int = 256) -> dict[str, Any]:
    before = load()
    n_plain, plain_s = plain_loop(dataset)
    log(f"plain loop: {n_plain / plain_s:.0f} images/s")
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--rank", str(r), "--world", str(world), str(dataset)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for r in range(world)
    ]
    peaks = watch(procs)
    wall = time.perf_counter() - t0
    ranks = [json.loads(p.stdout.read().strip().splitlines()[-1]) for p in procs if p.stdout]
    images = sum(r["images"] for r in ranks)
    epoch_s = max(r["seconds"] for r in ranks)
    result = {
        "ranks": world,
        "decode_workers_per_rank": 1,
        "images": images,
        "epoch_seconds": round(epoch_s, 1),
        "wall_seconds_with_startup": round(wall, 1),
        "images_per_s": round(images / epoch_s, 1),
        "plain_loop_images_per_s": round(n_plain / plain_s, 1),
        "ratio_streamed_to_plain": round((images / epoch_s) / (n_plain / plain_s), 2),
        "peak_rss_rank_bytes": peaks["peak_rss_top"],
        "peak_rss_any_process_bytes": peaks["peak_rss_any_process"],
        "loadavg_before": before,
        "loadavg_after": load(),
    }
    log(f"stream: {result}")
    return result


def filesystem_of(path: Path) -> dict[str, Any]:
    """The mount holding `path`: its type and, for ext4, whether it has a journal. Without
    one, ext4 passes over every inode freed in the last minutes (up to 5) when it makes a
    file (the kernel's `recently_deleted`), so creating files soon after deleting many costs
    several times more: on a no-journal host, 190 -> 840 us a file over four rounds of 30,000
    made and removed back to back, against 62 us with nothing deleted lately."""
    where = os.path.realpath(path)
    best = ("", "", "")
    with open("/proc/mounts") as fh:
        for line in fh:
            device, mount, kind = line.split()[:3]
            inside = where == mount or where.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best[1]):
                best = (device, mount, kind)
    device, mount, kind = best
    journal = None
    task = Path("/sys/fs/ext4") / os.path.basename(device) / "journal_task"
    if kind == "ext4" and task.exists():
        journal = task.read_text().strip() != "<none>"
    return {"mount": mount, "type": kind, "journal": journal}


def bench_fetch(n: int, work: Path) -> dict[str, Any]:
    from pipelines.runner import fetch, transfer
    from pipelines.settings import load_settings
    from pipelines.storage import s3_client

    settings = load_settings()
    client = s3_client(settings)
    endpoint = fetch.endpoint_of(client)
    if endpoint is None:
        raise SystemExit("fetch bench needs an explicit S3 endpoint (lepton services up)")
    bucket, prefix = settings.data_bucket, f"bench-data-scale/{n}"
    have = sum(
        page.get("KeyCount", 0)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    if have < n:
        t0 = time.perf_counter()
        items = [
            (f"{prefix}/c{i % 10}/{i:07d}.png", encode_png(synthetic_image(i, 8))) for i in range(n)
        ]
        with mp.get_context("fork").Pool(4) as pool:
            pool.starmap(fetch.put_objects, [(endpoint, bucket, items[i::4]) for i in range(4)])
        log(f"uploaded {n} objects in {time.perf_counter() - t0:.0f}s")
    before = load()
    dest = work / "fetched"
    t0 = time.perf_counter()
    count = transfer.download(client, f"s3://{bucket}/{prefix}", dest, log=log)
    seconds = time.perf_counter() - t0
    assert count == n == sum(1 for p in dest.rglob("*.png")), count
    shutil.rmtree(dest)
    after = load()
    memory_rate = None  # the same download into tmpfs: the code's rate without the disk's
    if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 4 * n * 2**10:
        in_memory = Path(tempfile.mkdtemp(prefix="lepton-bench-fetch-", dir="/dev/shm"))
        try:
            t0 = time.perf_counter()
            transfer.download(client, f"s3://{bucket}/{prefix}", in_memory / "fetched")
            memory_rate = round(n / (time.perf_counter() - t0), 1)
        finally:
            shutil.rmtree(in_memory)
    sample = min(n, 10_000)  # boto3 as the runner used it before: get_object on 32 threads
    keys = [f"{prefix}/c{i % 10}/{i:07d}.png" for i in range(sample)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: client.get_object(Bucket=bucket, Key=k)["Body"].read(), keys))
    boto3_rate = sample / (time.perf_counter() - t0)
    result = {
        "objects": n,
        "seconds": round(seconds, 1),
        "objects_per_s": round(n / seconds, 1),
        "objects_per_s_into_tmpfs": memory_rate,
        "disk": filesystem_of(work),
        "boto3_32_threads_objects_per_s": round(boto3_rate, 1),
        "boto3_sample": sample,
        "loadavg_before": before,
        "loadavg_after": after,
    }
    log(f"fetch: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=16, help="image side, pixels")
    parser.add_argument("--fetch-objects", type=int, default=100_000, help="0 = skip")
    parser.add_argument("--work-dir", default="", help="scratch (default: system temp)")
    parser.add_argument("--rank", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("dataset", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank >= 0:
        stream_rank(args.dataset, args.rank, args.world, 256, 1)
        return 0
    return run_in_scratch("data_scale", args.work_dir, lambda work: measure(work, args))


def run_in_scratch(name: str, work_dir: str, measure: Any) -> int:
    """``measure(scratch folder)`` -> figures, printed as the JSON last line; scratch removed."""
    work = Path(tempfile.mkdtemp(prefix=f"lepton-bench-{name}-", dir=work_dir or None))
    try:
        result = {"bench": name, "cpu_count": os.cpu_count(), **measure(work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


def measure(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if args.fetch_objects:  # first: the later phases delete a million files (see bench_fetch)
        result["fetch"] = bench_fetch(args.fetch_objects, work)
    raw = work / "raw"
    seconds = make_raw(raw, args.images, args.size)
    log(f"wrote {args.images} PNGs ({args.size}x{args.size} RGB) in {seconds:.0f}s")
    dataset = work / "dataset"
    result["prepare"] = bench_prepare(raw, dataset, work / "scratch", args.images, args.size)
    shutil.rmtree(raw)  # inodes: the raw files are not needed any more
    result["stream"] = bench_stream(dataset)
    return result


if __name__ == "__main__":
    sys.exit(main())
