"""Export the trained network as the model artifact (docs/contracts.md "Model artifact").

``export_model`` writes ``model.onnx`` (input ``pixels`` float32 [N, C, H, W] 0..255, output
``logits``, dynamic batch), ``model.pt`` (TorchScript) and ``metadata.json`` into the model
dir, after checking that ONNX Runtime and TorchScript reproduce the trained module's logits on
a real batch; a mismatch raises :class:`ExportMismatch` and writes nothing.
``write_serving_code`` adds ``code/``: the serving package (``inference/``), the
``inference.py`` shim SageMaker's PyTorch inference toolkit loads, and ``requirements.txt``, so
the artifact carries the server that fits it (the container image's ``serve`` runs
``code/inference`` on ``PYTHONPATH``). training/model_tar.py packs that folder as a
byte-for-byte reproducible ``model.tar.gz``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.atomic import atomic_write_bytes

FORMAT_VERSION = 1
ONNX_OPSET = 17
ARTIFACT_FILES = ("model.onnx", "model.pt", "metadata.json")
SERVING_CODE = "code"  # model_dir/code: what serves this model (see write_serving_code)
# The code tree this module runs from: the checkout, or the job's code bundle.
CODE_ROOT = Path(__file__).resolve().parents[1]


class ExportMismatch(RuntimeError):
    """An exported model's outputs differ from the trained model's beyond tolerance."""


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path
    files: dict[str, str]  # artifact file name -> sha256
    max_abs_diff: dict[str, float]  # "onnx" / "torchscript" -> max |logit difference|


def build_metadata(
    manifest: Mapping[str, Any],
    *,
    arch: str,
    metrics: Mapping[str, float],
    data_manifest_sha256: str,
    code_version: str,
    mlflow_run_id: str | None,
) -> dict[str, Any]:
    """metadata.json content for a model trained on the dataset described by ``manifest``."""
    config = manifest.get("config") or {}
    return {
        "format_version": FORMAT_VERSION,
        "classes": list(manifest["classes"]),
        "image_size": [int(v) for v in manifest["image_size"]],
        "channels": int(manifest["channels"]),
        "mean": [float(v) for v in manifest["mean"]],
        "std": [float(v) for v in manifest["std"]],
        "input_scale": "0-255",
        "preprocessing_version": int(
            manifest.get("preprocessing_version", config.get("preprocessing_version", 1))
        ),
        "arch": arch,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "data_manifest_sha256": data_manifest_sha256,
        "code_version": code_version,
        "mlflow_run_id": mlflow_run_id,
    }


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated upstream
        torch.onnx.export(
            model,
            (example,),
            buf,  # type: ignore[arg-type]  # file-like works (legacy)
            input_names=["pixels"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return buf.getvalue()


def _torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example,), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def run_onnx(onnx_bytes: bytes, pixels: np.ndarray) -> np.ndarray:
    """Logits from an ONNX model on float32 ``[N, C, H, W]`` 0..255 pixels (ONNX Runtime CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"pixels": pixels.astype(np.float32)})[0]


def run_torchscript(ts_bytes: bytes, pixels: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        module = torch.jit.load(io.BytesIO(ts_bytes), map_location="cpu")
    with torch.inference_mode():
        return module(torch.from_numpy(pixels.astype(np.float32))).numpy()


def _check(name: str, reference: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> float:
    if got.shape != reference.shape:
        raise ExportMismatch(f"{name}: output shape {got.shape} != {reference.shape}")
    diff = float(np.max(np.abs(got - reference))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    if not np.isfinite(diff) or diff > atol + rtol * scale:
        raise ExportMismatch(
            f"{name} export differs from the trained model: max |diff| "
            f"{diff:.3g} > {atol} + {rtol} * {scale:.3g}"
        )
    return diff


def export_model(
    model: nn.Module,
    model_dir: str | os.PathLike[str],
    *,
    example: torch.Tensor,
    metadata: Mapping[str, Any],
    rtol: float = 1e-3,
    atol: float = 1e-3,
) -> ExportResult:
    """Check then write model.onnx, model.pt and metadata.json (last) into ``model_dir``.

    ``model`` takes float32 ``[N, C, H, W]`` pixels in 0..255 (its first layer normalises);
    ``example`` is a real batch of such pixels (>= 2 images, used for tracing and parity).
    Parity: |exported - trained| <= atol + rtol * max|trained| on every logit, also on a
    batch of one (the batch axis is dynamic).
    """
    model = model.to("cpu", dtype=torch.float32).to(memory_format=torch.contiguous_format)
    model = model.eval()
    example = example.detach().to("cpu", torch.float32).contiguous()
    if example.ndim != 4 or len(example) < 2:
        raise ValueError(f"example must be a [N>=2, C, H, W] batch, got {tuple(example.shape)}")
    with torch.inference_mode():
        reference = model(example).numpy()
        reference_one = model(example[:1]).numpy()
    onnx_model = _onnx_bytes(model, example)
    ts_model = _torchscript_bytes(model, example)
    pixels = example.numpy()
    diffs = {
        "onnx": max(
            _check("ONNX", reference, run_onnx(onnx_model, pixels), rtol, atol),
            _check("ONNX (batch 1)", reference_one, run_onnx(onnx_model, pixels[:1]), rtol, atol),
        ),
        "torchscript": max(
            _check("TorchScript", reference, run_torchscript(ts_model, pixels), rtol, atol),
            _check(
                "TorchScript (batch 1)",
                reference_one,
                run_torchscript(ts_model, pixels[:1]),
                rtol,
                atol,
            ),
        ),
    }
    meta = json.dumps(dict(metadata), indent=2, sort_keys=True).encode() + b"\n"
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for name, data in (("model.onnx", onnx_model), ("model.pt", ts_model), ("metadata.json", meta)):
        atomic_write_bytes(out / name, data)
        files[name] = hashlib.sha256(data).hexdigest()
    return ExportResult(out, files, diffs)


def write_serving_code(model_dir: str | os.PathLike[str], code_root: Path = CODE_ROOT) -> Path:
    """Copy the serving package, the toolkit shim and the image requirements into
    ``model_dir/code`` (replacing what is there); returns that folder."""
    target = Path(model_dir) / SERVING_CODE
    source = code_root / "inference"
    if not (source / "server.py").is_file():
        raise FileNotFoundError(f"no serving package at {source}: cannot make the model servable")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target / "inference", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(source / "handler.py", target / "inference.py")
    requirements = code_root / "infra" / "image" / "requirements.txt"
    if requirements.is_file():
        shutil.copy2(requirements, target / "requirements.txt")
    return target
