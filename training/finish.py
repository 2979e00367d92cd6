"""Rank 0 after fit: final evaluation in fp32, export, the MLflow run's end, training.json.

The model is exported before anything is sent to MLflow, and the tracking calls are bounded
(training.tracking), so a tracking server that went away never costs the model; training.json
is written last so its ``tracking`` entry says whether everything reached the server."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from training.atomic import atomic_write_bytes
from training.config import as_dict
from training.evaluation import evaluate_split
from training.export import build_metadata, export_model, write_serving_code
from training.job import Fitted, Job
from training.tracking import confusion_matrix_figure


def final_metrics(job: Job, fitted: Fitted) -> tuple[dict[str, float], Any, str]:
    """(val_*/test_* metrics plus the last epoch's train loss/acc, the last split's
    confusion matrix, the split it came from)."""
    model = fitted.module.model.float().eval()
    metrics: dict[str, float] = {}
    matrix = None
    for split in ("val", "test"):
        ds = fitted.data.load(split)
        if len(ds) == 0:
            continue
        result = evaluate_split(
            model, ds.images, ds.labels, len(job.classes), job.cfg.eval_batch_size
        )
        metrics.update({f"{split}_{k}": v for k, v in result["metrics"].items()})
        matrix = result["confusion_matrix"]
    if fitted.reporter.history:
        last = fitted.reporter.history[-1]
        metrics.update({k: last[k] for k in ("train_loss", "train_acc") if k in last})
    return metrics, matrix, "test" if "test_accuracy" in metrics else "val"


def _example_batch(fitted: Fitted) -> torch.Tensor:
    """A few real images (NCHW float, 0..255) for export checks and MLflow's signature."""
    ref = fitted.data.load("test") if len(fitted.data.load("test")) else fitted.data.load("train")
    idx = np.arange(max(2, min(8, len(ref)))) % len(ref)  # export needs a batch of >= 2
    return torch.from_numpy(ref.images[idx]).permute(0, 3, 1, 2).float()


def _report(
    job: Job, fitted: Fitted, metrics: dict[str, float], final_split: str, exported: Any
) -> dict[str, Any]:
    """training.json: what the job did, for the runner, the registry and people."""
    reporter, trainer = fitted.reporter, fitted.trainer
    return {
        "metrics": metrics,
        "final_split": final_split,
        "mlflow_run_id": job.tracker.run_id,
        "epochs": job.cfg.epochs,
        "global_step": int(trainer.global_step),
        "steps_per_epoch": int(trainer.num_training_batches),
        "world_size": job.env.world_size,
        "num_nodes": job.env.num_nodes,
        "per_device_batch_size": job.cfg.per_device_batch_size,
        "global_batch_size": job.global_batch_size,
        "precision": str(trainer.precision),
        "fit_seconds": fitted.fit_seconds,
        "train_seconds": reporter.train_seconds,
        "train_images_per_s": reporter.train_images / max(reporter.train_seconds, 1e-9),
        "resumed_from": str(job.resume) if job.resume else None,
        "history": reporter.history,
        "export_max_abs_diff": exported.max_abs_diff,
        "model_files": exported.files,
        "config": as_dict(job.cfg),
        "data_manifest_sha256": job.manifest_sha,
        "code_version": job.env.code_version,
        # {"enabled", "complete", "pending_batches", "missing", ...}: complete is false when
        # the tracking server was away at the end and something was not logged
        "tracking": job.tracker.report(),
        "data": {
            "streamed": bool(fitted.data.streaming),
            "in_memory_max_bytes": int(fitted.data.budget),
            "shuffle_buffer": int(fitted.data.shuffle_buffer),
            "stream_worker_max_bytes": int(fitted.data.max_held_bytes),
        },
    }


def finish(job: Job, fitted: Fitted) -> int:
    """Evaluate, export (checked against the trained model), log and end the run, then write
    training.json."""
    metrics, matrix, final_split = final_metrics(job, fitted)
    model_cpu = fitted.module.model.float().eval().cpu().to(memory_format=torch.contiguous_format)
    example = _example_batch(fitted)
    metadata = build_metadata(
        job.manifest,
        arch=job.cfg.arch,
        metrics=metrics,
        data_manifest_sha256=job.manifest_sha,
        code_version=job.env.code_version,
        mlflow_run_id=job.tracker.run_id,
    )
    exported = export_model(model_cpu, job.paths.model_dir, example=example, metadata=metadata)
    write_serving_code(job.paths.model_dir)
    tracker = job.tracker
    tracker.log_metrics({f"final_{k}": v for k, v in metrics.items()}, step=job.cfg.epochs)
    if matrix is not None:
        figure = confusion_matrix_figure(matrix, job.classes)
        tracker.log_figure(figure, f"confusion_matrix_{final_split}.png")
    tracker.log_dict(metadata, "metadata.json")
    with torch.inference_mode():
        logits = model_cpu(example).numpy()
    onnx_path = job.paths.model_dir / "model.onnx"
    tracker.log_onnx_model(onnx_path, example.numpy(), logits, step=job.cfg.epochs)
    tracker.end("FINISHED")
    if job.paths.output_data_dir is not None:
        report = _report(job, fitted, metrics, final_split, exported)
        atomic_write_bytes(
            job.paths.output_data_dir / "training.json",
            (json.dumps(report, indent=2, sort_keys=True) + "\n").encode(),
        )
    print(
        "training: done | "
        + " | ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        + f" | fit {fitted.fit_seconds:.1f}s",
        flush=True,
    )
    return 0
