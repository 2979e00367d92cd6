"""Side-by-side serving benchmark: the lepton inference server vs ``mlflow models serve``.

Both serve the same ONNX model, each as its own process on 127.0.0.1, with their default
worker settings and access logging on. One closed-loop load generator (asyncio, keep-alive
connections, raw HTTP/1.1, so the client costs the same for both) runs each server at
concurrency 1, 8 and 32 for ``--duration`` seconds after a warm-up, then prints a table and,
as its last line, one JSON object.

Payloads: MLflow gets the model's tensor as JSON (``{"inputs": [[C][H][W] floats]}``), its only
way to take pixels; lepton is measured with the same pixels as a JSON array, and with the PNG and
``.npy`` forms a client would normally send. Every answer's status is checked (non-200 counted).

    .venv/bin/python bench/serve.py [--model DIR] [--duration 5] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


@contextlib.contextmanager
def process(
    cmd: list[str], ping: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[None]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
    )
    try:
        try:
            wait_ready(ping, 180, proc)
        except (RuntimeError, TimeoutError):
            if log:
                out.flush()  # type: ignore[union-attr]
                sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise
        yield
    finally:
        proc.terminate()  # SIGTERM to our child only
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def http_request(port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _client(
    port: int,
    request: bytes,
    stop_at: float,
    record_from: float,
    lat: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            t1 = time.perf_counter()
            if t0 >= record_from:
                lat.append(t1 - t0)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


def load(
    port: int, request: bytes, concurrency: int, duration_s: float, warmup_s: float
) -> dict[str, float]:
    async def run() -> tuple[list[float], list[int]]:
        lat: list[float] = []
        errors: list[int] = []
        start = time.perf_counter()
        await asyncio.gather(
            *(
                _client(port, request, start + warmup_s + duration_s, start + warmup_s, lat, errors)
                for _ in range(concurrency)
            )
        )
        return lat, errors

    lat, errors = asyncio.run(run())
    ms = np.asarray(lat) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": len(errors),
        "throughput_rps": round(len(lat) / duration_s, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else float("nan"),
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else float("nan"),
    }


def payloads(
    model_dir: Path, seed: int = 0
) -> tuple[dict[str, tuple[bytes, str]], dict[str, tuple[bytes, str]]]:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="model dir (default: a tiny contract model)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--lepton-payloads", default="json,png,npy")
    p.add_argument("--skip-mlflow", action="store_true")
    p.add_argument("--lepton-args", default="", help="extra server flags, e.g. '--workers 2'")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    python = sys.executable

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            from inference.testing import write_tiny_model

            model_dir = write_tiny_model(work / "model")
        ours, theirs = payloads(model_dir)
        rows: list[dict[str, Any]] = []

        # Both servers run for the whole benchmark and are measured in turn at each level, so
        # drift in the machine's background load hits both alike (an idle server costs ~0 CPU).
        with contextlib.ExitStack() as stack:
            targets: list[tuple[str, str, int, bytes]] = []
            port = free_port()
            cmd = [
                python,
                "-m",
                "inference.server",
                "--model",
                str(model_dir),
                "--port",
                str(port),
                *args.lepton_args.split(),
            ]
            stack.enter_context(
                process(cmd, f"http://127.0.0.1:{port}/ping", log=work / "lepton.log")
            )
            for name in args.lepton_payloads.split(","):
                targets.append(
                    ("lepton", name, port, http_request(port, "/invocations", *ours[name]))
                )
            if not args.skip_mlflow:
                uri, env = mlflow_model(model_dir, work)
                port = free_port()
                mlflow_bin = str(Path(python).with_name("mlflow"))
                cmd = [
                    mlflow_bin,
                    "models",
                    "serve",
                    "-m",
                    uri,
                    "--env-manager",
                    "local",
                    "-p",
                    str(port),
                    "-h",
                    "127.0.0.1",
                ]
                stack.enter_context(
                    process(cmd, f"http://127.0.0.1:{port}/ping", env=env, log=work / "mlflow.log")
                )
                targets.append(
                    ("mlflow", "json", port, http_request(port, "/invocations", *theirs["json"]))
                )
            for c in levels:
                for server, name, port, request in targets:
                    r = load(port, request, c, args.duration, args.warmup)
                    rows.append({"server": server, "payload": name, **r})
                    print(json.dumps(rows[-1]), flush=True)

    print()
    print(
        f"{'server':8} {'payload':9} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    for r in rows:
        print(
            f"{r['server']:8} {r['payload']:9} {r['concurrency']:>4} {r['throughput_rps']:>9} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['errors']:>6}"
        )
    summary: dict[str, object] = {
        "bench": "serve",
        "model": str(args.model or "tiny-cnn-test"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "duration_s": args.duration,
        "results": rows,
    }
    if not args.skip_mlflow:
        ratios = {}
        for c in levels:
            theirs_row = next(r for r in rows if r["server"] == "mlflow" and r["concurrency"] == c)
            for r in rows:
                if r["server"] == "lepton" and r["concurrency"] == c:
                    key = f"{r['payload']}@{c}"
                    ratios[key] = {
                        "throughput_x": round(
                            float(r["throughput_rps"])
                            / max(float(theirs_row["throughput_rps"]), 1e-9),
                            2,
                        ),
                        "p99_lower": float(r["p99_ms"]) < float(theirs_row["p99_ms"]),
                    }
        summary["vs_mlflow"] = ratios
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
