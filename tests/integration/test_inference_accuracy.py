"""Held-out images classified over HTTP reach the accuracy training measured on them."""

from __future__ import annotations

import http.client
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from inference.predictor import Predictor
from inference.server import ServerConfig, serve_in_thread


def _post(port: int, body: bytes, content_type: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    doc = json.loads(resp.read())
    conn.close()
    return doc


def test_served_accuracy_matches_training(trained_model_dir: Path, tiny_dataset_dir: Path) -> None:
    from training.shards import load_split

    x, y = load_split(tiny_dataset_dir, "test")  # every test shard, decoded
    meta = json.loads((trained_model_dir / "metadata.json").read_text())
    expected = meta["metrics"]["test_accuracy"]
    classes = meta["classes"]

    predictor = Predictor.load(trained_model_dir, threads=1)
    with serve_in_thread(predictor, ServerConfig(port=0, access_log=False)) as handle:
        by_png = []
        for img in x:  # one PNG per request, as a client would send a photo
            buf = io.BytesIO()
            Image.fromarray(img[..., 0]).save(buf, "PNG")
            by_png.append(
                _post(handle.port, buf.getvalue(), "image/png")["predictions"][0]["label"]
            )
        by_npy = []
        for start in range(0, len(x), 32):  # batches of arrays
            buf = io.BytesIO()
            np.save(buf, x[start : start + 32])
            by_npy += [
                p["label"]
                for p in _post(handle.port, buf.getvalue(), "application/x-npy")["predictions"]
            ]

    truth = [classes[i] for i in y]
    acc_png = float(np.mean([p == t for p, t in zip(by_png, truth, strict=True)]))
    acc_npy = float(np.mean([p == t for p, t in zip(by_npy, truth, strict=True)]))
    assert by_png == by_npy  # lossless PNG of the preprocessed size == the array itself
    assert abs(acc_png - expected) <= 0.01, (acc_png, expected)
    assert abs(acc_npy - expected) <= 0.01, (acc_npy, expected)
