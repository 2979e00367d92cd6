"""training/export.py: parity-checked ONNX + TorchScript export, metadata, reproducible tar."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from training.export import ExportMismatch, build_metadata, export_model
from training.model import build_model
from training.model_tar import pack_model_tar
from training.shards import load_split, read_manifest


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        "small_cnn", channels=1, num_classes=4, image_size=[8, 8], mean=[0.3], std=[0.2], width=4
    )


def test_export_writes_parity_checked_artifacts(tmp_path: Path) -> None:
    model = _model()
    example = torch.rand(6, 1, 8, 8) * 255
    meta = {"classes": ["a", "b", "c", "d"]}
    result = export_model(model, tmp_path, example=example, metadata=meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.json", "model.onnx", "model.pt"]
    assert max(result.max_abs_diff.values()) < 1e-3
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    batch = (np.random.default_rng(0).random((3, 1, 8, 8)) * 255).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(["logits"], {"pixels": batch})[0]  # batch size differs: dynamic
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    with torch.no_grad():
        reference = model.eval()(torch.from_numpy(batch)).numpy()
        ts_out = scripted(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(onnx_out, reference, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ts_out, reference, atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "metadata.json").read_text()) == meta


class _Drifting(nn.Module):
    """Returns something different on every call: tracing bakes in one value."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x.flatten(1)[:, :4]) + float(self.calls)


def test_export_refuses_a_model_whose_export_differs(tmp_path: Path) -> None:
    with pytest.raises(ExportMismatch, match="differs"):
        export_model(_Drifting(), tmp_path, example=torch.rand(2, 1, 2, 2), metadata={})
    assert not (tmp_path / "model.onnx").exists()


def test_metadata_and_tar_follow_the_contract(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    manifest = read_manifest(tiny_dataset_dir)
    meta = build_metadata(
        manifest,
        arch="small_cnn",
        metrics={"test_accuracy": 0.9},
        data_manifest_sha256="ab" * 32,
        code_version="v1",
        mlflow_run_id=None,
    )
    assert meta["input_scale"] == "0-255" and meta["channels"] == 1
    assert meta["image_size"] == [8, 8] and meta["classes"][0] == "0"
    assert isinstance(meta["preprocessing_version"], int)
    export_model(_model(), tmp_path / "m", example=torch.rand(2, 1, 8, 8) * 255, metadata=meta)
    sha_a = pack_model_tar(tmp_path / "m", tmp_path / "a.tar.gz")
    sha_b = pack_model_tar(tmp_path / "m", tmp_path / "b.tar.gz")
    assert sha_a == sha_b
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert tar.getnames() == ["metadata.json", "model.onnx", "model.pt"]
        assert {m.mtime for m in tar.getmembers()} == {0}
        meta_back = json.load(io.BytesIO(tar.extractfile("metadata.json").read()))
    assert meta_back == meta


def test_trained_model_dir_fixture(trained_model_dir: Path, tiny_dataset_dir: Path) -> None:
    meta = json.loads((trained_model_dir / "metadata.json").read_text())
    assert meta["classes"] == [str(i) for i in range(10)] and meta["mlflow_run_id"] is None
    assert meta["metrics"]["test_accuracy"] > 0.6
    images = load_split(tiny_dataset_dir, "test")[0][:5]
    pixels = images.transpose(0, 3, 1, 2).astype(np.float32)
    session = ort.InferenceSession(
        str(trained_model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    logits = session.run(["logits"], {"pixels": pixels})[0]
    assert logits.shape == (5, 10)
