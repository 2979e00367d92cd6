"""One process of a training job (a DDP rank), as torchrun starts it: parse the config and the
environment, fit, and on global rank 0 evaluate, export and record (training/finish.py).

``training/train.py`` is the entry point; see its docstring for inputs and outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from training.checkpoints import GracefulStop, PeriodicCheckpoint, find_resume_checkpoint
from training.config import SETUPS, TrainConfig, as_dict, from_hyperparameters, named_setup
from training.env import TrainEnv, bound_mlflow_requests, read_env
from training.job import Fitted, Job, JobPaths
from training.model import build_model
from training.module import ClassifierModule
from training.progress import EpochReporter
from training.resume import JobIdentity, check_resume_compatible
from training.runtime import build_trainer, precision_setting, use_gpu
from training.serialize import add_config_options, config_from_namespace
from training.shards import read_manifest, read_manifest_bytes
from training.tracking import NullTracker, TrackingUnavailable, start_tracking
from training.train import __doc__ as TRAIN_DOC

log = logging.getLogger("training")
EXIT_SIGTERM = 143  # 128 + SIGTERM: interrupted, checkpoint saved, run again to resume


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description=TRAIN_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", help="dataset folder or s3:// URI (default SM_CHANNEL_DATASET)")
    p.add_argument("--model-dir", help="exported model folder (default SM_MODEL_DIR)")
    p.add_argument("--output-data-dir", help="training.json folder (default SM_OUTPUT_DATA_DIR)")
    p.add_argument(
        "--checkpoint-dir",
        help="checkpoints (default LEPTON_CHECKPOINT_DIR or /opt/ml/checkpoints)",
    )
    p.add_argument("--setup", choices=sorted(SETUPS), help="named setup to start from")
    p.add_argument("--no-tracking", action="store_true", help="skip MLflow even if configured")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--no-verify-data", action="store_true", help="skip shard sha256 checks")
    p.add_argument(
        "--report-param-digest",
        action="store_true",
        help="every rank prints the sha256 of its final parameters (tests)",
    )
    add_config_options(p, TrainConfig)
    return p


def resolve_config(ns: argparse.Namespace, env: TrainEnv) -> TrainConfig:
    """Named setup (flag, else SM_HPS 'setup'), then SM_HPS fields, then config flags."""
    hps = dict(env.hyperparameters)
    setup = ns.setup or hps.pop("setup", None)
    hps.pop("setup", None)
    base = named_setup(setup) if setup else TrainConfig()
    try:
        return config_from_namespace(TrainConfig, ns, base=from_hyperparameters(hps, base))
    except ValueError as exc:
        raise SystemExit(f"training: {exc}") from None


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


class _SigtermOutsideFit:
    """SIGTERM before or after ``trainer.fit`` (Lightning handles it inside): stop cleanly."""

    def __init__(self) -> None:
        self.in_fit = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.in_fit:
            raise SIGTERMException()


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


def _start_tracking(
    ns: argparse.Namespace,
    env: TrainEnv,
    paths: JobPaths,
    manifest: dict[str, Any],
    sha: str,
    resume: bool,
) -> NullTracker:
    """Rank 0's tracker; an unusable tracking server fails the job at start, in one line."""
    if not env.is_global_zero or ns.no_tracking:
        return NullTracker()
    bound_mlflow_requests(env)
    try:
        return start_tracking(
            env.mlflow_tracking_uri,
            experiment_name=env.mlflow_experiment_name,
            run_name=env.mlflow_run_name,
            checkpoint_dir=paths.checkpoint_dir,
            resume=resume,
            tags={
                "data_manifest_sha256": sha,
                "code_version": env.code_version,
                "dataset": str(manifest.get("dataset", "")),
                "lepton.step": "train",
            },
            retry_window_s=env.tracking_retry_window_s,
        )
    except TrackingUnavailable as exc:
        print(f"training: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def prepare_job(argv: Sequence[str] | None) -> Job:
    """Parse flags and the environment, read the manifest, find the checkpoint, start tracking."""
    env = read_env()
    ns, unknown = build_parser().parse_known_args(None if argv is None else list(argv))
    foreign = [a for a in unknown if a.startswith("--") and not a.startswith("--sagemaker")]
    if foreign:  # SageMaker's drivers may add their own --sagemaker_* arguments
        raise SystemExit(f"training: unknown arguments {foreign}")
    cfg = resolve_config(ns, env)
    paths = resolve_paths(ns, env)
    _configure_logging(env)
    manifest_sha = hashlib.sha256(read_manifest_bytes(paths.dataset)).hexdigest()
    manifest = read_manifest(paths.dataset)
    resume = None if ns.no_resume else find_resume_checkpoint(paths.checkpoint_dir)
    if resume is not None:
        check_resume_compatible(resume, cfg, manifest_sha)
    tracker = _start_tracking(ns, env, paths, manifest, manifest_sha, resume is not None)
    return Job(
        cfg=cfg,
        env=env,
        paths=paths,
        manifest=manifest,
        manifest_sha=manifest_sha,
        resume=resume,
        tracker=tracker,
        verify_data=not ns.no_verify_data,
        report_param_digest=ns.report_param_digest,
    )


def main(argv: Sequence[str] | None = None) -> int:
    job = prepare_job(argv)
    guard = _SigtermOutsideFit()
    previous = signal.signal(signal.SIGTERM, guard)
    try:
        fitted = fit(job, guard)
        if job.report_param_digest:
            digest = _param_digest(fitted.module.model)
            print(f"param_digest rank={job.env.rank} sha256={digest}", flush=True)
        if not job.env.is_global_zero:
            return 0
        from training.finish import finish

        return finish(job, fitted)
    except SIGTERMException:
        job.tracker.end("KILLED")
        if job.env.is_global_zero:
            print(
                "training: stopped by SIGTERM; run again with the same checkpoint dir to resume",
                flush=True,
            )
        return EXIT_SIGTERM
    except (KeyboardInterrupt, SystemExit):
        job.tracker.end("KILLED")
        raise
    except BaseException:
        job.tracker.end("FAILED")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _build_module(job: Job) -> ClassifierModule:
    cfg, manifest = job.cfg, job.manifest
    model = build_model(
        cfg.arch,
        channels=int(manifest["channels"]),
        num_classes=len(job.classes),
        image_size=manifest["image_size"],
        mean=manifest["mean"],
        std=manifest["std"],
        width=cfg.width,
        pretrained_weights=cfg.pretrained_weights,
    )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return ClassifierModule(model, cfg, num_classes=len(job.classes))


def fit(job: Job, guard: _SigtermOutsideFit) -> Fitted:
    """Build model, data and trainer on every rank and run `trainer.fit` (resuming if asked)."""
    from training.data import RestoreLoaderPosition, ShardDataModule

    cfg, env = job.cfg, job.env
    gpu = use_gpu(env)
    job.tracker.log_params(
        {
            **as_dict(cfg),
            "world_size": env.world_size,
            "num_nodes": env.num_nodes,
            "global_batch_size": job.global_batch_size,
            "precision_resolved": precision_setting(cfg, gpu),
        }
    )
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # same init on every rank
    module = _build_module(job)
    data = ShardDataModule(
        job.paths.dataset,
        job.manifest,
        per_device_batch_size=cfg.per_device_batch_size,
        eval_batch_size=cfg.eval_batch_size,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        verify=job.verify_data,
        in_memory_max_bytes=cfg.data_in_memory_max_bytes,
        stream_workers=cfg.stream_workers,
        shuffle_buffer=cfg.shuffle_buffer,
    )
    reporter = EpochReporter(job.tracker, world_size=env.world_size)
    callbacks = [
        GracefulStop(),
        reporter,
        PeriodicCheckpoint(
            job.paths.checkpoint_dir, cfg.checkpoint_every_epochs, cfg.keep_checkpoints
        ),
        RestoreLoaderPosition(),
        JobIdentity(cfg, job.manifest_sha, env.world_size),
    ]
    trainer = build_trainer(cfg, env, callbacks)
    if env.is_global_zero:
        print(
            f"training: {cfg.arch} on {job.manifest.get('dataset')} ({len(job.classes)} classes), "
            f"{env.num_nodes} host(s), {env.world_size} process(es) x {cfg.per_device_batch_size} "
            f"= global batch {job.global_batch_size}, precision {trainer.precision}"
            + (f", resuming from {job.resume}" if job.resume else ""),
            flush=True,
        )
    started = time.perf_counter()
    guard.in_fit = True
    try:
        trainer.fit(
            module,
            datamodule=data,
            ckpt_path=str(job.resume) if job.resume else None,
            weights_only=True,
        )
    finally:
        guard.in_fit = False
    if trainer.received_sigterm or trainer.interrupted:
        raise SIGTERMException()
    return Fitted(module, data, trainer, reporter, time.perf_counter() - started)


if __name__ == "__main__":
    from inference.quick_exit import quick_exit

    sys.exit(quick_exit(main()))
