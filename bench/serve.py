"""Side-by-side serving benchmark: the lepton server vs LitServe vs ``mlflow models serve``.

All serve the same ONNX model, each as its own process on 127.0.0.1, with access logging on:
lepton with its defaults; LitServe (Lightning's server) set up as its docs suggest for batching
(``max_batch_size=32``, ``batch_timeout=0.002`` s, ``fast_queue=True``, one CPU worker, ONNX
Runtime in ``predict``); MLflow with its defaults. One closed-loop load generator (asyncio,
keep-alive connections, raw HTTP/1.1, so the client costs the same for all) runs each server at
concurrency 1, 8 and 32 for ``--duration`` seconds after a warm-up, the servers taking turns at
each level so that drift in the machine's load hits all alike; then it prints a table and, as
its last line, one JSON object with the ratios and the load average (``os.getloadavg``) seen.

Payloads: lepton and LitServe get the same pixels as the same JSON document
(``{"instances": [[H][W][C] ints]}``); MLflow gets them as the model's tensor
(``{"inputs": [[C][H][W] floats]}``), its only way to take pixels. lepton is also measured with
the PNG and ``.npy`` forms a client would normally send. Every answer's status is checked.
``--lepton-payloads json,json-pure,...``: ``json-pure`` is the same JSON sent to a second lepton
server whose C pixel reader (infra/image/native) is off (``LEPTON_JSON_NATIVE=0``): the gain of
that reader, measured side by side.

``--arch resnet18`` measures the other end: a resnet18 at 224 x 224 px built and exported by the
project's own training code (random weights, nothing downloaded), where the model dominates.
Beside lepton at each concurrency it measures, in the same run, the limit of this machine: the
same model.onnx called directly by ONNX Runtime on batches of 32 (same session options and
threads as the server), before and after each lepton point (each point is compared with the
mean of its two neighbours), giving images/s and the latency of one full batch; ``--reps N``
repeats the rounds and reports the median ratios. Also images per CPU-second, the server
process against raw ONNX Runtime: a ratio that other load on the machine barely moves.

    .venv/bin/python bench/serve.py [--model DIR | --arch resnet18] [--duration 5]
                                    [--concurrency 1,8,32] [--skip-mlflow] [--skip-litserve]
                                    [--reps 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve_load import free_port, http_request, load, process  # noqa: E402
from bench.serve_models import (  # noqa: E402
    mlflow_model,
    onnx_session,
    payloads,
    raw_onnx,
    resnet18_model,
)

try:  # LitServe pickles its API object into a worker process: the class must be importable
    import litserve as _litserve
except ImportError:  # pragma: no cover - the benchmark then needs --skip-litserve
    _litserve = None

if _litserve is not None:

    class LitServeOnnx(_litserve.LitAPI):  # type: ignore[misc, name-defined]
        """model.onnx behind LitServe, answering top-k JSON like lepton's."""

        def __init__(self, model_dir: Path, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.model_dir = model_dir
            self.classes = json.loads((model_dir / "metadata.json").read_text())["classes"]

        def setup(self, device: str) -> None:
            self.session = onnx_session(self.model_dir / "model.onnx")

        def decode_request(self, request):  # type: ignore[no-untyped-def]  # LitServe reads the annotation
            pixels = np.asarray(request["instances"][0], dtype=np.float32)  # [H, W, C]
            return pixels.transpose(2, 0, 1)

        def predict(self, x: np.ndarray) -> np.ndarray:
            logits = self.session.run(None, {"pixels": x})[0]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

        def encode_response(self, output: np.ndarray) -> dict[str, Any]:
            order = np.argsort(-output)[:5]
            top = [{"label": self.classes[i], "score": float(output[i])} for i in order]
            return {"predictions": [{**top[0], "top_k": top}]}


def litserve_main(model_dir: Path, port: int) -> None:
    """LitServe on model.onnx, batching as its docs suggest (max_batch_size, batch_timeout on
    the LitAPI; fast_queue on the server), one CPU worker."""
    if _litserve is None:
        raise SystemExit("litserve is not installed (pip install litserve), or --skip-litserve")
    api = LitServeOnnx(model_dir, max_batch_size=32, batch_timeout=0.002)
    server = _litserve.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=True)
    server.run(host="127.0.0.1", port=port, generate_client_file=False)


def lepton_batches(port: int) -> dict[str, float]:
    """Model calls and mean images per call over the whole run, from lepton's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("lepton_batch_size_count ", "lepton_batch_size_sum "))
    }
    calls = values.get("lepton_batch_size_count", 0.0)
    images = values.get("lepton_batch_size_sum", 0.0)
    return {"calls": calls, "mean_images_per_call": round(images / max(calls, 1.0), 2)}


def _ratios(rows: list[dict[str, Any]], other: str, levels: list[int]) -> dict[str, Any]:
    out = {}
    for c in levels:
        theirs = next((r for r in rows if r["server"] == other and r["concurrency"] == c), None)
        if theirs is None:
            continue
        for r in rows:
            if r["server"] == "lepton" and r["concurrency"] == c:
                out[f"{r['payload']}@{c}"] = {
                    "throughput_x": round(
                        float(r["throughput_rps"]) / max(float(theirs["throughput_rps"]), 1e-9), 2
                    ),
                    "p99_lower": float(r["p99_ms"]) < float(theirs["p99_ms"]),
                }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", type=Path, help="model dir (default: a tiny contract model)")
    p.add_argument("--arch", choices=("tiny", "resnet18"), default="tiny", help="without --model")
    p.add_argument(
        "--duration",
        type=float,
        help="seconds measured per point (default 5; 20 with resnet18, whose answers come in "
        "bursts of a whole ~1 s batch, so a short window miscounts by up to a batch)",
    )
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--lepton-payloads", default="json,png,npy")
    p.add_argument("--skip-mlflow", action="store_true")
    p.add_argument("--skip-litserve", action="store_true")
    p.add_argument("--lepton-args", default="", help="extra server flags, e.g. '--workers 2'")
    p.add_argument(
        "--reps", type=int, default=1, help="with raw ONNX Runtime: rounds, the median reported"
    )
    p.add_argument("--litserve-worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.litserve_worker is not None:  # the LitServe server process (see litserve_main)
        litserve_main(args.model, args.litserve_worker)
        return 0
    if args.duration is None:
        args.duration = 20.0 if args.arch == "resnet18" and args.model is None else 5.0
    levels = [int(c) for c in args.concurrency.split(",")]
    python = sys.executable
    load_avg = {"start": os.getloadavg()}

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        model_dir = args.model
        if model_dir is None and args.arch == "resnet18":
            model_dir = resnet18_model(work / "model")
        elif model_dir is None:
            from inference.testing import write_tiny_model

            model_dir = write_tiny_model(work / "model")
        ours, theirs = payloads(model_dir)
        rows: list[dict[str, Any]] = []

        # All servers run for the whole benchmark and are measured in turn at each level, so
        # drift in the machine's background load hits all alike (an idle server costs ~0 CPU).
        with contextlib.ExitStack() as stack:
            targets: list[tuple[str, str, int, bytes]] = []

            def lepton_cmd(port: int) -> list[str]:
                return [
                    python, "-m", "inference.server", "--model", str(model_dir),
                    "--port", str(port), *args.lepton_args.split(),
                ]  # fmt: skip

            port = free_port()
            lepton = stack.enter_context(
                process(lepton_cmd(port), f"http://127.0.0.1:{port}/ping", log=work / "lepton.log")
            )
            pids = {port: lepton.pid}  # the server each lepton target's CPU time is read from
            for name in args.lepton_payloads.split(","):
                target_port = port
                if name == "json-pure":  # JSON with the C reader off (LEPTON_JSON_NATIVE=0)
                    target_port = free_port()
                    pure = stack.enter_context(
                        process(
                            lepton_cmd(target_port),
                            f"http://127.0.0.1:{target_port}/ping",
                            env=os.environ | {"LEPTON_JSON_NATIVE": "0"},
                            log=work / "lepton-pure.log",
                        )
                    )
                    pids[target_port] = pure.pid
                body = ours["json" if name == "json-pure" else name]
                request = http_request(target_port, "/invocations", *body)
                targets.append(("lepton", name, target_port, request))
            if not args.skip_litserve:
                port = free_port()
                cmd = [python, str(Path(__file__).resolve()), "--model", str(model_dir)]
                cmd += ["--litserve-worker", str(port)]
                stack.enter_context(
                    process(cmd, f"http://127.0.0.1:{port}/health", log=work / "litserve.log")
                )
                targets.append(
                    ("litserve", "json", port, http_request(port, "/predict", *ours["json"]))
                )
            if not args.skip_mlflow:
                uri, env = mlflow_model(model_dir, work)
                port = free_port()
                mlflow_bin = str(Path(python).with_name("mlflow"))
                cmd = [
                    mlflow_bin, "models", "serve", "-m", uri, "--env-manager", "local",
                    "-p", str(port), "-h", "127.0.0.1",
                ]  # fmt: skip
                stack.enter_context(
                    process(cmd, f"http://127.0.0.1:{port}/ping", env=env, log=work / "mlflow.log")
                )
                targets.append(
                    ("mlflow", "json", port, http_request(port, "/invocations", *theirs["json"]))
                )
            measure_raw = args.arch == "resnet18" or args.model is not None
            raws: list[dict[str, float]] = []

            def measure_limit() -> None:  # the servers are idle meanwhile
                raws.append(raw_onnx(model_dir, 32, max(args.duration / 2, 5.0)))
                print(json.dumps({"raw_onnx": raws[-1]}), flush=True)

            for rep in range(args.reps if measure_raw else 1):
                for c in levels:
                    for server, name, port, request in targets:
                        if measure_raw and server == "lepton":
                            measure_limit()
                        pid = pids[port] if measure_raw and server == "lepton" else None
                        r = load(port, request, c, args.duration, args.warmup, cpu_pid=pid)
                        rows.append({"server": server, "payload": name, **r})
                        if pid is not None:
                            per_cpu = r["requests"] / max(r["server_cpu_s"], 1e-9)
                            rows[-1].update(
                                raw_index=len(raws), rep=rep, images_per_cpu_s=round(per_cpu, 2)
                            )
                        print(json.dumps(rows[-1]), flush=True)
                    load_avg[f"after_c{c}" + (f"_rep{rep}" if rep else "")] = os.getloadavg()
            if measure_raw:
                measure_limit()
            batches = lepton_batches(targets[0][2])  # the first lepton server's

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
        "model": str(args.model or args.arch),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_avg_1_5_15min": {k: [round(x, 2) for x in v] for k, v in load_avg.items()},
        "duration_s": args.duration,
        "results": rows,
        "lepton_model_calls": batches,
    }
    for other in ("litserve", "mlflow"):
        ratios = _ratios(rows, other, levels)
        if ratios:
            summary[f"vs_{other}"] = ratios
    if raws:
        # Each lepton point against the mean of the raw measurements just before and after it,
        # so that drift in the machine's load between them hits both sides alike.
        summary["raw_onnx"] = raws
        limits: dict[str, list[dict[str, float]]] = {}
        for r in rows:
            if r["server"] == "lepton":
                near = raws[r["raw_index"] - 1 : r["raw_index"] + 1]
                rate = float(np.mean([x["images_per_s"] for x in near]))
                batch_ms = float(np.mean([x["batch_latency_ms"] for x in near]))
                limits.setdefault(f"{r['payload']}@{r['concurrency']}", []).append(
                    {
                        "raw_images_per_s": round(rate, 1),
                        "raw_batch_latency_ms": round(batch_ms, 1),
                        "throughput_fraction": round(float(r["throughput_rps"]) / rate, 3),
                        "p99_over_batch_latency": round(float(r["p99_ms"]) / batch_ms, 2),
                        # Robust to other load on the machine: images per CPU-second, server
                        # process vs raw ONNX Runtime (the load generator's CPU not counted).
                        "cpu_efficiency_fraction": round(
                            r["images_per_cpu_s"]
                            / float(np.mean([x["images_per_cpu_s"] for x in near])),
                            3,
                        ),
                    }
                )
        summary["vs_raw_onnx"] = {
            key: {
                "median_throughput_fraction": float(
                    np.median([x["throughput_fraction"] for x in points])
                ),
                "median_p99_over_batch_latency": float(
                    np.median([x["p99_over_batch_latency"] for x in points])
                ),
                "median_cpu_efficiency_fraction": float(
                    np.median([x["cpu_efficiency_fraction"] for x in points])
                ),
                "rounds": points,
            }
            for key, points in limits.items()
        }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
