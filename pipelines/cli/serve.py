"""`lepton serve --model REF` and `lepton predict IMAGE... [--endpoint URL]`."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from inference.security import client_headers
from pipelines.settings import load_settings

CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".npy": "application/x-npy",
    ".json": "application/json",
}


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve a model over HTTP (SageMaker container contract)")
    serve.add_argument(
        "--model",
        required=True,
        help="models:/NAME@champion | models:/NAME/VERSION | s3://.../model.tar.gz | PATH",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (needs LEPTON_ENDPOINT_TOKEN; clients send it)",
    )
    serve.add_argument("--port", type=int, help="default: LEPTON_ENDPOINT_PORT or 8080")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--backend", choices=("onnx", "torchscript"), default="onnx")
    serve.set_defaults(func=_serve)
    predict = sub.add_parser("predict", help="classify image files through an endpoint")
    predict.add_argument("images", nargs="+", type=Path, help="PNG, JPEG, .npy or .json files")
    predict.add_argument("--endpoint", help="endpoint URL (default: the local endpoint)")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--explain", action="store_true", help="also ask for a saliency map")
    predict.set_defaults(func=_predict)


def _serve(args: argparse.Namespace) -> int:
    from inference import server
    from pipelines.register.registry import download_model

    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="lepton-serve-") as tmp:
        model_dir = download_model(settings, args.model, Path(tmp))
        port = args.port or settings.endpoint_port
        argv = [
            "--model",
            str(model_dir),
            "--host",
            args.host,
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--backend",
            args.backend,
            *(["--allow-remote"] if args.allow_remote else []),
        ]
        return int(server.main(argv) or 0)


def _predict(args: argparse.Namespace) -> int:
    endpoint = (args.endpoint or load_settings().endpoint_url).rstrip("/")
    query = f"?top_k={args.top_k}" + ("&explain=true" if args.explain else "")
    failures = 0
    for path in args.images:
        ctype = CONTENT_TYPES.get(path.suffix.lower())
        if ctype is None:
            print(f"{path}: unsupported file type {path.suffix!r}", file=sys.stderr)
            failures += 1
            continue
        request = urllib.request.Request(
            f"{endpoint}/invocations{query}",
            data=path.read_bytes(),
            method="POST",
            headers={"Content-Type": ctype, "Accept": "application/json", **client_headers()},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            print(
                f"{path}: HTTP {err.code}: {err.read().decode(errors='replace')}", file=sys.stderr
            )
            failures += 1
            continue
        except urllib.error.URLError as err:
            raise ConnectionError(
                f"no endpoint at {endpoint} ({err.reason}); "
                "deploy one with `make pipeline-run` or `lepton serve`"
            ) from err
        for pred in body["predictions"]:
            ranked = ", ".join(f"{t['label']} {t['score']:.3f}" for t in pred["top_k"])
            print(f"{path}: {pred['label']}  ({ranked})")
    return 1 if failures else 0
