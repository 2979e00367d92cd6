"""Training step entry point: ``python -m training.train``, under torchrun, or on SageMaker.

Inputs come from flags or the SageMaker training environment (training/env.py): the dataset
folder (``--dataset`` / ``SM_CHANNEL_DATASET``), the model dir (``--model-dir`` /
``SM_MODEL_DIR``), the output dir (``--output-data-dir`` / ``SM_OUTPUT_DATA_DIR``) and the
checkpoint dir (``--checkpoint-dir`` / ``LEPTON_CHECKPOINT_DIR`` / /opt/ml/checkpoints).
The config is a named setup (``--setup``) overridden by ``SM_HPS`` and then by flags.

Outputs (global rank 0 only): model dir (model.onnx, model.pt, metadata.json), output dir
``training.json`` (final metrics, MLflow run id), checkpoints, the MLflow run.
Exit codes: 0 done, 143 stopped by SIGTERM after saving a checkpoint, 1 error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from training.checkpoints import (
    GracefulStop,
    PeriodicCheckpoint,
    find_resume_checkpoint,
    load_checkpoint_file,
)
from training.config import (
    TrainConfig,
    add_config_arguments,
    as_dict,
    config_overrides,
    from_hyperparameters,
    named_setup,
)
from training.env import TrainEnv, read_env
from training.evaluation import evaluate_split
from training.export import build_metadata, export_model
from training.model import build_model
from training.module import ClassifierModule
from training.progress import EpochReporter
from training.runtime import build_trainer, precision_setting, use_gpu
from training.shards import atomic_write_bytes, read_manifest, read_manifest_bytes
from training.tracking import (
    NullTracker,
    TrackingUnavailable,
    confusion_matrix_figure,
    start_tracking,
)

log = logging.getLogger("training")
EXIT_SIGTERM = 143  # 128 + SIGTERM: interrupted, checkpoint saved, run again to resume
# config fields that may change between an interrupted run and its resumption
RESUME_MUTABLE = {
    "num_workers",
    "num_threads",
    "eval_batch_size",
    "process_group_timeout_s",
    "checkpoint_every_epochs",
    "keep_checkpoints",
    "limit_val_batches",
}


@dataclass(frozen=True)
class JobPaths:
    dataset: str
    model_dir: Path
    output_data_dir: Path | None
    checkpoint_dir: Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", help="dataset folder or s3:// URI (default SM_CHANNEL_DATASET)")
    p.add_argument("--model-dir", help="exported model folder (default SM_MODEL_DIR)")
    p.add_argument("--output-data-dir", help="training.json folder (default SM_OUTPUT_DATA_DIR)")
    p.add_argument(
        "--checkpoint-dir",
        help="checkpoints (default LEPTON_CHECKPOINT_DIR or /opt/ml/checkpoints)",
    )
    p.add_argument("--no-tracking", action="store_true", help="skip MLflow even if configured")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--no-verify-data", action="store_true", help="skip shard sha256 checks")
    p.add_argument(
        "--report-param-digest",
        action="store_true",
        help="every rank prints the sha256 of its final parameters (tests)",
    )
    add_config_arguments(p)
    return p


def resolve_config(ns: argparse.Namespace, env: TrainEnv) -> TrainConfig:
    """Named setup (flag, else SM_HPS 'setup'), then SM_HPS fields, then flags."""
    hps = dict(env.hyperparameters)
    flags = config_overrides(ns)
    setup = flags.pop("setup", None) or hps.pop("setup", None)
    hps.pop("setup", None)
    cfg = named_setup(setup) if setup else TrainConfig()
    return from_hyperparameters(flags, from_hyperparameters(hps, cfg))


def resolve_paths(ns: argparse.Namespace, env: TrainEnv) -> JobPaths:
    dataset = ns.dataset or env.dataset_dir
    model_dir = ns.model_dir or env.model_dir
    if not dataset or not model_dir:
        raise SystemExit(
            "training: need --dataset (or SM_CHANNEL_DATASET) and --model-dir (or SM_MODEL_DIR)"
        )
    output = ns.output_data_dir or env.output_data_dir
    return JobPaths(
        dataset,
        Path(model_dir),
        Path(output) if output else None,
        Path(ns.checkpoint_dir or env.checkpoint_dir),
    )


def _check_resume_compatible(ckpt_path: Path, cfg: TrainConfig, manifest_sha: str) -> None:
    stored = load_checkpoint_file(ckpt_path).get("lepton", {})
    old_cfg, new_cfg = stored.get("config", {}), as_dict(cfg)
    changed = sorted(
        k for k in new_cfg if k not in RESUME_MUTABLE and k in old_cfg and old_cfg[k] != new_cfg[k]
    )
    if changed:
        raise SystemExit(
            f"training: checkpoint {ckpt_path} was written with a different config "
            f"({', '.join(changed)}); use an empty --checkpoint-dir or the same config"
        )
    if stored.get("data_manifest_sha256", manifest_sha) != manifest_sha:
        raise SystemExit(
            f"training: checkpoint {ckpt_path} was trained on another dataset "
            "(manifest sha256 differs); use an empty --checkpoint-dir"
        )


class _SigtermOutsideFit:
    """SIGTERM before or after ``trainer.fit`` (Lightning handles it inside): stop cleanly."""

    def __init__(self) -> None:
        self.in_fit = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.in_fit:
            raise SIGTERMException()


class _LeptonState(pl.Callback):
    """Stores config, dataset identity and world size in every checkpoint."""

    def __init__(self, cfg: TrainConfig, manifest_sha: str, world_size: int) -> None:
        self.payload = {
            "config": as_dict(cfg),
            "data_manifest_sha256": manifest_sha,
            "world_size": world_size,
        }

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["lepton"] = self.payload


def _param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _configure_logging(env: TrainEnv) -> None:
    level = logging.INFO if env.is_global_zero else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING if env.is_global_zero else logging.ERROR)


def _start_tracking_or_exit(uri: str | None, **kwargs: Any) -> NullTracker:
    try:
        return start_tracking(uri, **kwargs)
    except TrackingUnavailable as exc:  # fail at start with one clear line, not a traceback
        print(f"training: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> int:
    env = read_env()
    ns, unknown = build_parser().parse_known_args(None if argv is None else list(argv))
    foreign = [a for a in unknown if a.startswith("--") and not a.startswith("--sagemaker")]
    if foreign:
        raise SystemExit(f"training: unknown arguments {foreign}")
    cfg = resolve_config(ns, env)
    paths = resolve_paths(ns, env)
    _configure_logging(env)
    manifest_sha = hashlib.sha256(read_manifest_bytes(paths.dataset)).hexdigest()
    manifest = read_manifest(paths.dataset)
    resume = None if ns.no_resume else find_resume_checkpoint(paths.checkpoint_dir)
    if resume is not None:
        _check_resume_compatible(resume, cfg, manifest_sha)
    rank0 = env.is_global_zero
    tracker: NullTracker = NullTracker()
    if rank0 and not ns.no_tracking:
        tracker = _start_tracking_or_exit(
            env.mlflow_tracking_uri,
            experiment_name=env.mlflow_experiment_name,
            run_name=env.mlflow_run_name,
            checkpoint_dir=paths.checkpoint_dir,
            resume=resume is not None,
            tags={
                "data_manifest_sha256": manifest_sha,
                "code_version": env.code_version,
                "dataset": str(manifest.get("dataset", "")),
                "lepton.step": "train",
            },
        )
    guard = _SigtermOutsideFit()
    previous = signal.signal(signal.SIGTERM, guard)
    try:
        return _run(cfg, env, paths, manifest, manifest_sha, resume, tracker, guard, ns)
    except SIGTERMException:
        tracker.end("KILLED")
        if rank0:
            print(
                "training: stopped by SIGTERM; run again with the same checkpoint dir to resume",
                flush=True,
            )
        return EXIT_SIGTERM
    except (KeyboardInterrupt, SystemExit):
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(
    cfg: TrainConfig,
    env: TrainEnv,
    paths: JobPaths,
    manifest: dict[str, Any],
    manifest_sha: str,
    resume: Path | None,
    tracker: NullTracker,
    guard: _SigtermOutsideFit,
    ns: argparse.Namespace,
) -> int:
    from training.data import RestoreLoaderPosition, ShardDataModule

    rank0 = env.is_global_zero
    global_batch_size = cfg.per_device_batch_size * env.world_size
    assert global_batch_size == cfg.per_device_batch_size * env.world_size
    gpu = use_gpu(env)
    tracker.log_params(
        {
            **as_dict(cfg),
            "world_size": env.world_size,
            "num_nodes": env.num_nodes,
            "global_batch_size": global_batch_size,
            "precision_resolved": precision_setting(cfg, gpu),
        }
    )
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # same init on every rank
    classes = list(manifest["classes"])
    model = build_model(
        cfg.arch,
        channels=int(manifest["channels"]),
        num_classes=len(classes),
        image_size=manifest["image_size"],
        mean=manifest["mean"],
        std=manifest["std"],
        width=cfg.width,
        pretrained_weights=cfg.pretrained_weights,
    )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    module = ClassifierModule(model, cfg, num_classes=len(classes))
    data = ShardDataModule(
        paths.dataset,
        manifest,
        per_device_batch_size=cfg.per_device_batch_size,
        eval_batch_size=cfg.eval_batch_size,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        verify=not ns.no_verify_data,
    )
    reporter = EpochReporter(tracker, world_size=env.world_size)
    checkpoint = PeriodicCheckpoint(
        paths.checkpoint_dir, cfg.checkpoint_every_epochs, cfg.keep_checkpoints
    )
    callbacks = [
        GracefulStop(),
        reporter,
        checkpoint,
        RestoreLoaderPosition(),
        _LeptonState(cfg, manifest_sha, env.world_size),
    ]
    trainer = build_trainer(cfg, env, callbacks)
    if rank0:
        print(
            f"training: {cfg.arch} on {manifest.get('dataset')} ({len(classes)} classes), "
            f"{env.world_size} process(es) x {cfg.per_device_batch_size} = global batch "
            f"{global_batch_size}, precision {trainer.precision}"
            + (f", resuming from {resume}" if resume else ""),
            flush=True,
        )
    started = time.perf_counter()
    guard.in_fit = True
    try:
        trainer.fit(
            module, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True
        )
    finally:
        guard.in_fit = False
    fit_seconds = time.perf_counter() - started
    if trainer.received_sigterm or trainer.interrupted:
        raise SIGTERMException()
    if ns.report_param_digest:
        print(f"param_digest rank={env.rank} sha256={_param_digest(module.model)}", flush=True)
    if not rank0:
        return 0
    return _finish(
        cfg,
        env,
        paths,
        manifest,
        manifest_sha,
        module,
        data,
        trainer,
        reporter,
        tracker,
        fit_seconds,
        resume,
        global_batch_size,
    )


def _finish(
    cfg: TrainConfig,
    env: TrainEnv,
    paths: JobPaths,
    manifest: dict[str, Any],
    manifest_sha: str,
    module: ClassifierModule,
    data: Any,
    trainer: pl.Trainer,
    reporter: EpochReporter,
    tracker: NullTracker,
    fit_seconds: float,
    resume: Path | None,
    global_batch_size: int,
) -> int:
    """Rank 0 after fit: evaluate val/test in fp32, export, write training.json, log."""
    classes = list(manifest["classes"])
    model = module.model.float().eval()
    metrics: dict[str, float] = {}
    test_cm = None
    for split in ("val", "test"):
        ds = data.load(split)
        if len(ds) == 0:
            continue
        result = evaluate_split(model, ds.images, ds.labels, len(classes), cfg.eval_batch_size)
        metrics.update({f"{split}_{k}": v for k, v in result["metrics"].items()})
        test_cm = result["confusion_matrix"]
    final_split = "test" if "test_accuracy" in metrics else "val"
    summary = {k: v for k, v in metrics.items()}
    if reporter.history:
        last = reporter.history[-1]
        summary.update({k: last[k] for k in ("train_loss", "train_acc") if k in last})
    model_cpu = model.cpu().to(memory_format=torch.contiguous_format)
    ref = data.load("test") if len(data.load("test")) else data.load("train")
    idx = np.arange(max(2, min(8, len(ref)))) % len(ref)  # export needs a batch of >= 2
    images = ref.images[idx]
    example = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    metadata = build_metadata(
        manifest,
        arch=cfg.arch,
        metrics=summary,
        data_manifest_sha256=manifest_sha,
        code_version=env.code_version,
        mlflow_run_id=tracker.run_id,
    )
    exported = export_model(model_cpu, paths.model_dir, example=example, metadata=metadata)
    steps_per_epoch = int(trainer.num_training_batches)
    report = {
        "metrics": summary,
        "final_split": final_split,
        "mlflow_run_id": tracker.run_id,
        "epochs": cfg.epochs,
        "global_step": int(trainer.global_step),
        "steps_per_epoch": steps_per_epoch,
        "world_size": env.world_size,
        "per_device_batch_size": cfg.per_device_batch_size,
        "global_batch_size": global_batch_size,
        "precision": str(trainer.precision),
        "fit_seconds": fit_seconds,
        "train_seconds": reporter.train_seconds,
        "train_images_per_s": reporter.train_images / max(reporter.train_seconds, 1e-9),
        "resumed_from": str(resume) if resume else None,
        "history": reporter.history,
        "export_max_abs_diff": exported.max_abs_diff,
        "model_files": exported.files,
        "config": as_dict(cfg),
        "data_manifest_sha256": manifest_sha,
        "code_version": env.code_version,
    }
    if paths.output_data_dir is not None:
        atomic_write_bytes(
            paths.output_data_dir / "training.json",
            (json.dumps(report, indent=2, sort_keys=True) + "\n").encode(),
        )
    tracker.log_metrics({f"final_{k}": v for k, v in summary.items()}, step=cfg.epochs)
    if test_cm is not None:
        tracker.log_figure(
            confusion_matrix_figure(test_cm, classes), f"confusion_matrix_{final_split}.png"
        )
    tracker.log_dict(metadata, "metadata.json")
    with torch.inference_mode():
        logits = model_cpu(example).numpy()
    tracker.log_onnx_model(paths.model_dir / "model.onnx", example.numpy(), logits, step=cfg.epochs)
    tracker.end("FINISHED")
    print(
        "training: done | "
        + " | ".join(f"{k} {v:.4f}" for k, v in sorted(summary.items()))
        + f" | fit {fit_seconds:.1f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
