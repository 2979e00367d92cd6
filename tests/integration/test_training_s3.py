"""Datasets and pretrained weights from s3:// (an in-process moto S3 server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from training.model import build_model, read_weights
from training.shards import DatasetError, load_split, read_manifest


@pytest.fixture()
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    boto3.client("s3").create_bucket(Bucket="lepton-test")
    try:
        yield "lepton-test"
    finally:
        server.stop()


def _upload(folder: Path, bucket: str, prefix: str) -> str:
    client = boto3.client("s3")
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}"


def test_dataset_reads_and_verifies_from_s3(s3_bucket: str, tiny_dataset_dir: Path) -> None:
    uri = _upload(tiny_dataset_dir, s3_bucket, "datasets/tiny")
    assert read_manifest(uri)["classes"] == read_manifest(tiny_dataset_dir)["classes"]
    x_remote, y_remote = load_split(uri, "train")
    x_local, y_local = load_split(tiny_dataset_dir, "train")
    np.testing.assert_array_equal(x_remote, x_local)
    np.testing.assert_array_equal(y_remote, y_local)
    with pytest.raises(DatasetError, match="no manifest.json"):
        read_manifest(f"s3://{s3_bucket}/datasets/missing")
    assert os.environ["AWS_ENDPOINT_URL_S3"].startswith("http://127.0.0.1")


def test_pretrained_weights_from_s3(s3_bucket: str, tmp_path: Path) -> None:
    source = build_model(
        "small_cnn", channels=1, num_classes=10, image_size=[8, 8], mean=[0.5], std=[0.2], width=4
    )
    save_file(
        {k: v.contiguous() for k, v in source.backbone.state_dict().items()},
        str(tmp_path / "w.safetensors"),
    )
    boto3.client("s3").upload_file(str(tmp_path / "w.safetensors"), s3_bucket, "w.safetensors")
    uri = f"s3://{s3_bucket}/w.safetensors"
    assert set(read_weights(uri)) == set(source.backbone.state_dict())
    target = build_model(
        "small_cnn",
        channels=1,
        num_classes=3,
        image_size=[8, 8],
        mean=[0.5],
        std=[0.2],
        width=4,
        pretrained_weights=uri,
    )
    assert torch.equal(target.backbone.features[0].weight, source.backbone.features[0].weight)
    assert target.backbone.fc.weight.shape == (3, 16)


def test_training_reads_an_s3_dataset(
    s3_bucket: str, tiny_dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.train import main

    for key in [k for k in os.environ if k.startswith(("SM_", "MLFLOW_"))]:
        monkeypatch.delenv(key)
    uri = _upload(tiny_dataset_dir, s3_bucket, "datasets/tiny")
    assert (
        main(
            [
                "--dataset",
                uri,
                "--model-dir",
                str(tmp_path / "model"),
                "--checkpoint-dir",
                str(tmp_path / "ckpt"),
                "--setup",
                "dev_run",
                "--no-tracking",
            ]
        )
        == 0
    )
    assert (tmp_path / "model" / "model.onnx").is_file()


def test_training_streams_an_s3_dataset(s3_bucket: str, tiny_dataset_dir: Path) -> None:
    """Each rank streams its share of the shards straight from s3://."""
    from training.stream import ShardStream, StreamLoader, StreamSpec

    uri = _upload(tiny_dataset_dir, s3_bucket, "datasets/tiny")
    manifest = read_manifest(uri)
    seen = []
    for rank in range(2):
        spec = StreamSpec(uri, manifest, "train", 64, True, 0, 128, 2, rank, workers=1)
        loader = StreamLoader(ShardStream(spec))
        loader.sampler.set_epoch(1)  # type: ignore[attr-defined]
        seen += [img.tobytes() for x, _ in loader for img in x.permute(0, 2, 3, 1).numpy()]
    images, _ = load_split(tiny_dataset_dir, "train")
    assert set(seen) == {img.tobytes() for img in images}
