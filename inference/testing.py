"""A tiny model artifact that follows docs/contracts.md, for tests and benchmarks only.

Real artifacts come from ``training/export.py``; this one lets the inference package be tested
and benchmarked without running training. torch is imported only when it is called.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from inference.preprocess import PREPROCESSING_VERSION

__all__ = ["write_tiny_model"]


def write_tiny_model(
    model_dir: str | Path,
    classes: Sequence[str] = ("circle", "square", "triangle", "cross"),
    image_size: tuple[int, int] = (32, 32),
    channels: int = 3,
    seed: int = 0,
) -> Path:
    """Write ``model.onnx``, ``model.pt`` and ``metadata.json`` of a small random-weight CNN.

    The network normalises its float32 ``[N, C, H, W]`` 0..255 input itself, as the contract
    requires, so the predictions depend on the pixels like a trained model's would.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    mean = [0.5] * channels
    std = [0.25] * channels

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
            self.features = nn.Sequential(
                nn.Conv2d(channels, 8, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.head = nn.Linear(16, len(classes))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = (pixels / 255.0 - self.mean) / self.std  # type: ignore[operator]
            return self.head(self.features(x)) * 4.0  # sharper than random init's near-uniform

    model = TinyNet().eval()
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, channels, *image_size) * 255
    with warnings.catch_warnings():  # the TorchScript-based exporters are deprecated upstream
        warnings.simplefilter("ignore")
        _export(model, example, out)
    metadata = {
        "format_version": 1,
        "classes": list(classes),
        "image_size": list(image_size),
        "channels": channels,
        "mean": mean,
        "std": std,
        "input_scale": "0-255",
        "preprocessing_version": PREPROCESSING_VERSION,
        "arch": "tiny-cnn-test",
        "metrics": {},
        "data_manifest_sha256": "0" * 64,
        "code_version": "test",
        "mlflow_run_id": None,
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return out


def _export(model: object, example: object, out: Path) -> None:
    import torch

    torch.onnx.export(
        model,  # type: ignore[arg-type]
        (example,),
        str(out / "model.onnx"),
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    torch.jit.script(model).save(str(out / "model.pt"))
