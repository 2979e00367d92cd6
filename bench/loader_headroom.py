"""Is data ever the bottleneck? A resnet18 at 224 px against the streaming loader (not a test).

Writes ~20,000 synthetic 224x224 RGB images (gradients plus noise; nothing downloaded) as a
dataset of PNG shards, then measures, one after the other:
1. the loader: training.stream over the train split (one rank, ``--workers`` decode workers,
   batch 64), images/s over one epoch with no model;
2. the model: resnet18 forward + backward + SGD step on batches already in memory
   (channels_last, the precision training would pick), images/s after warm-up;
3. both together: the same training steps fed by the loader.
The headroom is loader / model. Load average is recorded with every figure.

    .venv/bin/python bench/loader_headroom.py [--images 20000] [--workers 2] [--steps 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.data_scale import run_in_scratch, synthetic_image  # noqa: E402
from training.shards import (  # noqa: E402
    atomic_write_bytes,
    format_fields,
    shard_bytes,
    shard_entry,
    shard_name,
    write_manifest,
)

SIZE = 224
PER_SHARD = 500


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _write_shard(args: tuple[Path, str, int, int, int]) -> dict[str, Any]:
    out, split, index, start, stop = args
    images = np.stack([synthetic_image(i, SIZE) for i in range(start, stop)])
    labels = (np.arange(start, stop) % 10).astype(np.int64)
    data = shard_bytes(images, labels, first=start)
    atomic_write_bytes(out / shard_name(split, index), data)
    return shard_entry(shard_name(split, index), split, stop - start, data)


def make_dataset(out: Path, n: int) -> dict[str, Any]:
    tasks = [
        (out, "train", i, s, min(s + PER_SHARD, n)) for i, s in enumerate(range(0, n, PER_SHARD))
    ]
    tasks.append((out, "val", 0, n, n + 64))
    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        shards = pool.map(_write_shard, tasks)
    manifest = {
        **format_fields("png", [SIZE, SIZE]),
        "dataset": "synthetic-224",
        "classes": [str(i) for i in range(10)],
        "image_size": [SIZE, SIZE],
        "channels": 3,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "splits": {"train": {"count": n}, "val": {"count": 64}, "test": {"count": 0}},
        "shards": shards,
    }
    write_manifest(out, manifest)
    return manifest


def loader_for(dataset: Path, manifest: dict[str, Any], workers: int, batch: int) -> Any:
    from training.stream import ShardStream, StreamLoader, StreamSpec

    spec = StreamSpec(str(dataset), manifest, "train", batch, True, 0, 512, 1, 0, workers)
    loader = StreamLoader(ShardStream(spec))
    loader.sampler.set_epoch(0)  # type: ignore[attr-defined]
    return loader


def model_step(threads: int) -> tuple[Any, Any]:
    import torch

    from training.config import TrainConfig
    from training.model import build_model
    from training.runtime import precision_setting

    torch.set_num_threads(threads)
    model = build_model(
        "resnet18",
        channels=3,
        num_classes=10,
        image_size=[SIZE, SIZE],
        mean=[0.5] * 3,
        std=[0.25] * 3,
    ).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    bf16 = precision_setting(TrainConfig(), gpu=False) == "bf16-mixed"

    def step(x: Any, y: Any) -> None:
        x = x.float().contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, bf16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--work-dir", default="")
    args = parser.parse_args(argv)
    return run_in_scratch("loader_headroom", args.work_dir, lambda work: measure(work, args))


def measure(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    result: dict[str, Any] = {}
    dataset = work / "dataset"
    t0 = time.perf_counter()
    manifest = make_dataset(dataset, args.images)
    size = sum(s["bytes"] for s in manifest["shards"])
    log(f"wrote {args.images} images ({size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f}s")
    before = load()
    t0, n = time.perf_counter(), 0
    for x, _ in loader_for(dataset, manifest, args.workers, args.batch):
        n += len(x)
    loader_rate = n / (time.perf_counter() - t0)
    result["loader"] = {
        "images": n,
        "workers": args.workers,
        "images_per_s": round(loader_rate, 1),
        "loadavg_before": before,
        "loadavg_after": load(),
    }
    log(f"loader: {result['loader']}")
    step, bf16 = model_step(os.cpu_count() or 1)
    x = torch.randint(0, 256, (args.batch, 3, SIZE, SIZE), dtype=torch.uint8)
    y = torch.randint(0, 10, (args.batch,))
    step(x, y)  # warm-up
    before = load()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    model_rate = args.steps * args.batch / (time.perf_counter() - t0)
    result["model"] = {
        "arch": "resnet18",
        "batch": args.batch,
        "bf16_autocast": bf16,
        "images_per_s": round(model_rate, 1),
        "loadavg_before": before,
        "loadavg_after": load(),
    }
    log(f"model: {result['model']}")
    before = load()
    loader = iter(loader_for(dataset, manifest, args.workers, args.batch))
    step(*next(loader))
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(*next(loader))
    fed_rate = args.steps * args.batch / (time.perf_counter() - t0)
    del loader
    result["model_fed_by_loader"] = {
        "images_per_s": round(fed_rate, 1),
        "loadavg_before": before,
        "loadavg_after": load(),
    }
    result["headroom_loader_over_model"] = round(loader_rate / model_rate, 1)
    log(f"fed: {result['model_fed_by_loader']}; headroom {result['headroom_loader_over_model']}x")
    return result


if __name__ == "__main__":
    sys.exit(main())
