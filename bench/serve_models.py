"""bench/serve.py's models and payloads: the request bodies each server takes, the model as
MLflow serves it, a resnet18 exported by the project's own code, and ONNX Runtime called
directly (this machine's limit for the model)."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def payloads(
    model_dir: Path, seed: int = 0
) -> tuple[dict[str, tuple[bytes, str]], dict[str, tuple[bytes, str]]]:
    """(lepton's payloads by name, MLflow's); LitServe takes lepton's ``json``."""
    meta = json.loads((model_dir / "metadata.json").read_text())
    height, width = meta["image_size"]
    channels = meta["channels"]
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(png, "PNG")
    npy = io.BytesIO()
    np.save(npy, pixels[None])
    ours = {
        "json": (json.dumps({"instances": [pixels.tolist()]}).encode(), "application/json"),
        "png": (png.getvalue(), "image/png"),
        "npy": (npy.getvalue(), "application/x-npy"),
        "json_b64": (
            json.dumps({"b64": base64.b64encode(png.getvalue()).decode()}).encode(),
            "application/json",
        ),
    }
    chw = pixels.transpose(2, 0, 1).astype(np.float32)[None]
    theirs = {"json": (json.dumps({"inputs": chw.tolist()}).encode(), "application/json")}
    return ours, theirs


def mlflow_model(model_dir: Path, work: Path) -> tuple[str, dict[str, str]]:
    """Log model.onnx as an MLflow ONNX model into a local file store; return its URI and env."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    meta = json.loads((model_dir / "metadata.json").read_text())
    height, width = meta["image_size"]
    example = np.zeros((1, meta["channels"], height, width), np.float32)
    logits = np.zeros((1, len(meta["classes"])), np.float32)
    # A throwaway SQLite store (MLflow 3 refuses new file stores) with artifacts in the temp dir.
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    experiment = mlflow.create_experiment(
        "bench-serve", artifact_location=(work / "artifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.onnx.log_model(
            onnx.load(str(model_dir / "model.onnx")),
            name="model",
            signature=infer_signature(example, {"logits": logits}),
        )
    # mlflow execs `uvicorn` by name: put this interpreter's bin dir first on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PATH": path}
    return f"runs:/{run.info.run_id}/model", env


def onnx_session(path: Path) -> Any:
    """An ONNX Runtime session with the lepton server's options: all cores, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def resnet18_model(out: Path, size: int = 224, classes: int = 10) -> Path:
    """A resnet18 exported by the project's own path (training.model + training.export)."""
    import torch

    from training.export import export_model
    from training.model import build_model

    torch.manual_seed(0)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    model = build_model(
        "resnet18", channels=3, num_classes=classes, image_size=(size, size), mean=mean, std=std
    )
    metadata = {
        "format_version": 1,
        "classes": [f"class{i}" for i in range(classes)],
        "image_size": [size, size],
        "channels": 3,
        "mean": mean,
        "std": std,
        "input_scale": "0-255",
        "preprocessing_version": 1,
        "arch": "resnet18",
        "metrics": {},
        "data_manifest_sha256": "0" * 64,
        "code_version": "bench",
        "mlflow_run_id": None,
    }
    example = torch.rand(2, 3, size, size) * 255
    export_model(model.eval(), out, example=example, metadata=metadata)
    return out


def raw_onnx(model_dir: Path, batch: int, duration_s: float) -> dict[str, float]:
    """model.onnx called directly on ``[batch, C, H, W]``: the server's session options and
    threads (all cores), no HTTP, no decoding. Images/s and the latency of one full batch."""
    meta = json.loads((model_dir / "metadata.json").read_text())
    height, width = meta["image_size"]
    session = onnx_session(model_dir / "model.onnx")
    rng = np.random.default_rng(0)
    pixels = (rng.random((batch, meta["channels"], height, width)) * 255).astype(np.float32)
    session.run(None, {"pixels": pixels})  # warm-up
    times: list[float] = []
    cpu = time.process_time()  # this process's CPU time, ONNX Runtime's threads included
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s or len(times) < 3:
        t0 = time.perf_counter()
        session.run(None, {"pixels": pixels})
        times.append(time.perf_counter() - t0)
    return {
        "batch": batch,
        "calls": len(times),
        "images_per_s": round(batch * len(times) / sum(times), 1),
        "batch_latency_ms": round(float(np.median(times)) * 1000, 1),
        "images_per_cpu_s": round(batch * len(times) / (time.process_time() - cpu), 2),
    }
