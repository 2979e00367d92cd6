"""The pure inference core: load an exported model artifact and classify pixels.

No HTTP, no environment, no SageMaker, no Lightning. ONNX Runtime is the default backend;
TorchScript (``model.pt``) is the alternative and is also what input-gradient saliency uses.
torch is imported lazily, only by those two paths.

The model takes float32 ``[N, C, H, W]`` raw pixel values in 0..255 (normalisation is inside
the model, see docs/contracts.md); every public method here takes channels-last uint8
``[N, H, W, C]`` arrays as produced by :func:`inference.preprocess.to_array`.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import threading
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from inference.config import DEFAULT_MAX_PIXELS
from inference.preprocess import PREPROCESSING_VERSION, load_array

__all__ = ["ModelMetadata", "Predictor", "Prediction"]

Backend = Literal["onnx", "torchscript"]
Prediction = list[tuple[str, float]]  # top-k (label, probability), best first


@dataclass(frozen=True)
class ModelMetadata:
    """The fields of ``metadata.json`` inference needs; ``raw`` keeps the whole document."""

    classes: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width) in pixels
    channels: int
    preprocessing_version: int
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ModelMetadata:
        try:
            classes = tuple(str(c) for c in doc["classes"])
            height, width = (int(v) for v in doc["image_size"])
            channels = int(doc["channels"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"metadata.json lacks a valid classes/image_size/channels: {exc}"
            ) from None
        if not classes or channels not in (1, 3) or height < 1 or width < 1:
            raise ValueError(
                f"metadata.json is inconsistent: {len(classes)} classes, size {height}x{width}, {channels} channels"
            )
        version = int(doc.get("preprocessing_version", PREPROCESSING_VERSION))
        if version != PREPROCESSING_VERSION:
            raise ValueError(
                f"model was trained with preprocessing version {version}; this code implements "
                f"version {PREPROCESSING_VERSION}: predictions would not match training"
            )
        return cls(classes, (height, width), channels, version, dict(doc))


def _safe_extract(tar_path: Path) -> tuple[Path, tempfile.TemporaryDirectory[str]]:
    """Extract ``model.tar.gz`` into a private temp dir, refusing links and paths that escape."""
    tmp = tempfile.TemporaryDirectory(prefix="lepton-model-")
    with tarfile.open(tar_path, "r:*") as tar:
        tar.extractall(tmp.name, filter="data")  # "data": no absolute paths, .., devices, links out
    root = Path(tmp.name)
    if not (root / "metadata.json").exists():  # a tarball that wraps the dir in one folder
        subdirs = [p for p in root.iterdir() if p.is_dir() and (p / "metadata.json").exists()]
        if len(subdirs) == 1:
            root = subdirs[0]
    return root, tmp


class Predictor:
    """A loaded model. Thread-safe: any number of threads may call the predict methods."""

    def __init__(
        self,
        model_dir: Path,
        metadata: ModelMetadata,
        backend: Backend,
        run_logits: Any,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        top_k: int = 5,
    ) -> None:
        self.model_dir = model_dir
        self.meta = metadata
        self.backend = backend
        self.max_pixels = max_pixels
        self.top_k = top_k
        self._run_logits = run_logits  # float32 NCHW -> float logits [N, K]
        self._torch_model: Any = None
        self._torch_lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        model_dir_or_tar: str | Path,
        backend: Backend = "onnx",
        threads: int | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        top_k: int = 5,
    ) -> Predictor:
        """Load a model dir (``model.onnx``/``model.pt`` + ``metadata.json``) or ``model.tar.gz``.

        Args:
            model_dir_or_tar: the folder, or the tarball SageMaker stores (extracted to a
                temp dir removed when the predictor is garbage collected or closed).
            backend: ``"onnx"`` (ONNX Runtime, CPU or CUDA when available) or ``"torchscript"``.
            threads: intra-op threads of the backend; None leaves the runtime's default.
            max_pixels: pixel limit passed to :func:`inference.preprocess.decode_image`.
            top_k: default number of (label, score) pairs returned per image.
        """
        path = Path(model_dir_or_tar)
        tmp = None
        if path.is_file():
            path, tmp = _safe_extract(path)
        if not (path / "metadata.json").is_file():
            raise FileNotFoundError(f"{model_dir_or_tar}: no metadata.json (not a model artifact)")
        metadata = ModelMetadata.from_dict(json.loads((path / "metadata.json").read_text()))
        if backend == "onnx":
            run = _onnx_runner(path / "model.onnx", threads)
        elif backend == "torchscript":
            run = _torchscript_runner(path / "model.pt", threads)
        else:
            raise ValueError(f"backend must be 'onnx' or 'torchscript', got {backend!r}")
        predictor = cls(path, metadata, backend, run, max_pixels=max_pixels, top_k=top_k)
        if tmp is not None:
            predictor._tmp = tmp
            weakref.finalize(predictor, tmp.cleanup)
        predictor.predict_arrays(np.zeros((1, *predictor.input_shape), np.uint8))  # warm-up
        return predictor

    def close(self) -> None:
        """Drop the extracted temp dir, if any (the predictor stays usable until collected)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ---------------------------------------------------------------------------- metadata
    @property
    def metadata(self) -> dict[str, Any]:
        """The whole ``metadata.json`` document."""
        return dict(self.meta.raw)

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of one preprocessed image."""
        return (*self.meta.image_size, self.meta.channels)

    # --------------------------------------------------------------------------- predicting
    def preprocess(self, data: bytes) -> np.ndarray:
        """Encoded image bytes -> uint8 ``[H, W, C]`` exactly as training saw it.

        Raises :class:`inference.preprocess.ImageRejected`.
        """
        return load_array(data, self.meta.image_size, self.meta.channels, self.max_pixels)

    def check_batch(self, batch: np.ndarray) -> None:
        """Validate ``[N, H, W, C]`` integer or float pixels in 0..255 (N >= 1).

        Raises ValueError with a message fit for a client.
        """
        if not isinstance(batch, np.ndarray):
            raise ValueError(f"expected a numpy array, got {type(batch).__name__}")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            expected = "[N, {}, {}, {}]".format(*self.input_shape)
            raise ValueError(
                f"expected shape {expected} (N, height, width, channels), got {list(batch.shape)}"
            )
        if batch.shape[0] == 0:
            raise ValueError("empty batch: at least one image is needed")
        if batch.dtype == np.uint8:
            return
        if batch.dtype.kind not in "iuf":
            raise ValueError(f"pixel dtype must be integer or float, got {batch.dtype}")
        if batch.dtype.kind == "f" and not np.isfinite(batch).all():
            raise ValueError("pixel values must be finite (found NaN or Inf)")
        low, high = batch.min(), batch.max()
        if low < 0 or high > 255:
            raise ValueError(f"pixel values must be in 0..255, found {low:g}..{high:g}")

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (or int/float 0..255) ``[N, H, W, C]`` -> float32 probabilities ``[N, K]``."""
        self.check_batch(batch)
        pixels = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        logits = np.asarray(self._run_logits(pixels), dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs.astype(np.float32)

    def top_k_labels(self, probs: np.ndarray, k: int | None = None) -> list[Prediction]:
        """Probabilities ``[N, K]`` -> per row the ``k`` best (label, score), best first.

        Ties are broken by class index, so the answer is deterministic.
        """
        k = max(1, min(k or self.top_k, len(self.meta.classes)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            [(self.meta.classes[i], float(row[i])) for i in idx]
            for row, idx in zip(probs, order, strict=True)
        ]

    def predict_images(self, images: Sequence[bytes], k: int | None = None) -> list[Prediction]:
        """Encoded images -> top-k (label, score) per image. Raises ImageRejected."""
        batch = np.stack([self.preprocess(data) for data in images])
        return self.top_k_labels(self.predict_arrays(batch), k)

    # ------------------------------------------------------------------------- explanations
    def _torch(self) -> Any:
        with self._torch_lock:
            if self._torch_model is None:
                pt = self.model_dir / "model.pt"
                if not pt.is_file():
                    raise FileNotFoundError(
                        "explanations need model.pt (TorchScript) in the artifact"
                    )
                import torch

                with warnings.catch_warnings():  # "jit is deprecated": the contract's format
                    warnings.simplefilter("ignore", FutureWarning)
                    self._torch_model = torch.jit.load(str(pt), map_location="cpu").eval()
            return self._torch_model

    def saliency(self, array: np.ndarray, class_index: int | None = None) -> bytes:
        """Input-gradient saliency of one uint8 ``[H, W, C]`` image, as a grayscale PNG.

        The map is ``max_c |d logit[class] / d pixel|``, scaled so its maximum is 255; the
        class defaults to the top prediction. Same size as the model input.
        """
        import torch

        batch = np.asarray(array)[None]
        self.check_batch(batch)
        pixels = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        model = self._torch()
        x = torch.from_numpy(pixels).requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            target = int(logits[0].argmax()) if class_index is None else int(class_index)
            (grad,) = torch.autograd.grad(logits[0, target], x)
        heat = grad[0].abs().amax(dim=0).numpy().astype(np.float64)
        peak = heat.max()
        scaled = np.zeros_like(heat) if not np.isfinite(peak) or peak <= 0 else heat / peak
        buffer = io.BytesIO()
        Image.fromarray(np.rint(scaled * 255).astype(np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()


def _onnx_runner(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (backend 'onnx')")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    # Idle pool threads must not spin: on a small box they would steal the core that parses HTTP.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [
        p
        for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
        if p in ort.get_available_providers()
    ]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def run(pixels: np.ndarray) -> np.ndarray:
        return session.run([output_name], {input_name: pixels})[0]

    return run


def _torchscript_runner(path: Path, threads: int | None) -> Any:
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (backend 'torchscript')")
    if threads:
        torch.set_num_threads(int(threads))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location=device).eval()

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(pixels).to(device)).float().cpu().numpy()

    return run
