"""HTTP inference server speaking the SageMaker container contract (port 8080).

``GET /ping`` (200 only once a model is loaded and while not draining), ``POST /invocations``
(see :mod:`inference.codec` for bodies and answers; ``?explain=true`` or the header
``X-Amzn-SageMaker-Custom-Attributes: explain=true`` adds a saliency PNG, ``top_k=N`` changes
k), ``GET /metrics`` (Prometheus text), ``GET /execution-parameters`` (batch transform).

The application (:mod:`inference.app`) runs on one asyncio event loop with micro-batching and
model calls on worker threads. SIGTERM stops accepting, answers the requests in flight, exits.
Programmatic use: ``serve_in_thread(model_dir, port=0)`` -> :class:`ServerHandle`.

    python -m inference.server --model PATH [--port 8080] [--host 127.0.0.1] [--workers 1]
                               [--max-batch 32] [--max-wait-ms 2] [--backend onnx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from inference.app import InferenceServer, ServerConfig
from inference.predictor import Backend, Predictor

__all__ = ["InferenceServer", "ServerConfig", "ServerHandle", "main", "serve_in_thread"]

log = logging.getLogger("inference.server")


# --------------------------------------------------------------------- programmatic API
class ServerHandle:
    """A server running on its own thread and event loop: ``url``, ``port``, ``stop()``."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="lepton-server", daemon=True)

    def _main(self) -> None:
        async def body() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.run(self._stop, self._ready.set)

        try:
            asyncio.run(body())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    def start(self, timeout_s: float = 60.0) -> ServerHandle:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("server did not start in time")
        deadline = time.monotonic() + timeout_s
        while not self.server.metrics.model_loaded and self._error is None:
            if time.monotonic() > deadline or not self._thread.is_alive():
                break
            time.sleep(0.005)
        if self._error is not None or not self.server.metrics.model_loaded:
            self.stop(5)
            raise RuntimeError(f"server failed to start: {self._error}") from self._error
        return self

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://{self.server.config.host}:{self.port}"

    def stop(self, timeout_s: float | None = None) -> None:
        """Graceful stop, as on SIGTERM; returns when the server thread has finished."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        wait = timeout_s if timeout_s is not None else self.server.config.grace_s + 10
        self._thread.join(wait)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    model: Predictor | str | Path,
    config: ServerConfig | None = None,
    *,
    backend: Backend = "onnx",
    threads: int | None = None,
    **overrides: Any,
) -> ServerHandle:
    """Start a server in a background thread and return once it accepts and has a model.

    ``serve_in_thread(path, port=0)`` binds a free port: read ``handle.url``; ``handle.stop()``
    (or ``with serve_in_thread(...) as handle:``) stops it gracefully.
    """
    config = replace(config or ServerConfig(), **overrides)
    if isinstance(model, Predictor):
        predictor = model
    else:
        predictor = Predictor.load(
            model,
            backend=backend,
            threads=threads,
            max_pixels=config.max_pixels,
            top_k=config.top_k,
        )
    return ServerHandle(InferenceServer(config, predictor)).start()


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, ServerConfig]:
    defaults = ServerConfig()
    p = argparse.ArgumentParser(
        prog="python -m inference.server", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", required=True, help="model dir or model.tar.gz")
    p.add_argument("--backend", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads per worker (default: cores / workers)",
    )
    p.add_argument("--host", default=defaults.host)
    p.add_argument("--port", type=int, default=defaults.port)
    p.add_argument("--workers", type=int, default=defaults.workers)
    p.add_argument("--max-batch", type=int, default=defaults.max_batch)
    p.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms)
    p.add_argument("--max-pixels", type=int, default=defaults.max_pixels)
    p.add_argument("--top-k", type=int, default=defaults.top_k)
    p.add_argument("--grace-s", type=float, default=defaults.grace_s)
    p.add_argument("--header-timeout-s", type=float, default=defaults.header_timeout_s)
    p.add_argument("--body-timeout-s", type=float, default=defaults.body_timeout_s)
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    p.add_argument("--no-access-log", action="store_true")
    args = p.parse_args(argv)
    names = {f.name for f in fields(ServerConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    config = replace(defaults, **values, access_log=not args.no_access_log)
    return args, config


def main(argv: list[str] | None = None) -> int:
    args, config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    threads = args.threads or max(1, (os.cpu_count() or 1) // config.workers)
    log.info("config %s", json.dumps(asdict(config)))

    def load() -> Predictor:
        return Predictor.load(
            args.model,
            backend=args.backend,
            threads=threads,
            max_pixels=config.max_pixels,
            top_k=config.top_k,
        )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await InferenceServer(config, load=load).run(stop)

    try:
        asyncio.run(run())
    except Exception as exc:  # the model failed to load: say why, exit non-zero
        log.error("cannot serve %s: %s: %s", args.model, type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
