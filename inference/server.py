"""HTTP inference server speaking the SageMaker container contract (port 8080).

``GET /ping`` (200 only once a model is loaded and while not draining), ``POST /invocations``
(see :mod:`inference.codec` for bodies and answers; ``?explain=true`` or the header
``X-Amzn-SageMaker-Custom-Attributes: explain=true`` adds a saliency PNG, ``top_k=N`` changes
k), ``GET /metrics`` (Prometheus text), ``GET /execution-parameters`` (batch transform).

uvicorn with httptools serves the ASGI app (:mod:`inference.service` wires them); model calls
are micro-batched onto worker threads. SIGTERM stops accepting, answers the requests in flight,
exits 0. Loopback only unless ``--allow-remote`` and ``LEPTON_ENDPOINT_TOKEN`` are given
(:mod:`inference.security`). Programmatic use: ``serve_in_thread(model_dir, port=0)`` ->
:class:`ServerHandle`.

    python -m inference.server --model PATH [--port 8080] [--host 127.0.0.1] [--workers 1]
                               [--max-batch 32] [--max-wait-ms 2] [--backend onnx]
                               [--allow-remote] [--log-file PATH] ...   (--help lists all)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.handlers
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from inference.capture import DataCapture, s3_put
from inference.config import ServerConfig
from inference.predictor import Backend, Predictor
from inference.security import (
    TOKEN_ENV,
    BindRefused,
    check_bind,
    scrub_environment,
    secret_names,
)
from inference.service import InferenceServer

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
        while not self.server.loaded and self._error is None:
            if time.monotonic() > deadline or not self._thread.is_alive():
                break
            time.sleep(0.005)
        if self._error is not None or not self.server.loaded:
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
        prog="python -m inference.server", description=(__doc__ or "").split("\n\n")[0]
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
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help=f"allow a non-loopback --host; needs a bearer token in {TOKEN_ENV}",
    )
    p.add_argument(
        "--sagemaker-hosting",
        action="store_true",
        help="behind SageMaker hosting (the image's serve): any --host, no token (IAM "
        "authorises InvokeEndpoint; the platform strips Authorization headers)",
    )
    p.add_argument("--workers", type=int, default=defaults.workers)
    p.add_argument("--max-batch", type=int, default=defaults.max_batch)
    p.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms)
    p.add_argument("--max-pixels", type=int, default=defaults.max_pixels)
    p.add_argument("--max-request-pixels", type=int, default=defaults.max_request_pixels)
    p.add_argument("--top-k", type=int, default=defaults.top_k)
    p.add_argument("--grace-s", type=float, default=defaults.grace_s)
    p.add_argument("--header-timeout-s", type=float, default=defaults.header_timeout_s)
    p.add_argument("--body-timeout-s", type=float, default=defaults.body_timeout_s)
    p.add_argument("--keepalive-timeout-s", type=float, default=defaults.keepalive_timeout_s)
    p.add_argument("--request-timeout-s", type=float, default=defaults.request_timeout_s)
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    p.add_argument("--max-connections", type=int, default=defaults.max_connections)
    p.add_argument("--decode-threads", type=int, default=defaults.decode_threads)
    p.add_argument("--decode-queue", type=int, default=defaults.decode_queue)
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="let another server listen on the same port (a blue/green switch)",
    )
    p.add_argument(
        "--ready-file",
        type=Path,
        help="write this file (holding the pid) once the model is loaded and served",
    )
    p.add_argument("--capture-uri", help="s3:// prefix for data capture (SageMaker's layout)")
    p.add_argument("--capture-percent", type=float, default=defaults.capture_percent)
    p.add_argument("--endpoint-name", default=defaults.endpoint_name)
    p.add_argument(
        "--capture-credentials",
        type=Path,
        help="JSON file with the capture's S3 endpoint_url, aws_access_key_id, "
        "aws_secret_access_key and region (the environment holds no AWS keys)",
    )
    p.add_argument("--log-file", type=Path, help="write logs here, rotated (default: stderr)")
    p.add_argument("--log-max-bytes", type=int, default=20 * 2**20, help="rotate beyond this size")
    p.add_argument("--log-backups", type=int, default=5, help="rotated files kept")
    args = p.parse_args(argv)
    names = {f.name for f in fields(ServerConfig)} - {"auth_token"}
    values = {k: v for k, v in vars(args).items() if k in names}
    try:
        config = replace(defaults, **values, access_log=not args.no_access_log)
    except ValueError as exc:  # e.g. --workers 0
        p.error(str(exc))
    return args, config


def configure_logging(log_file: Path | None, max_bytes: int, backups: int) -> None:
    """Log lines to stderr, or to ``log_file`` rotated at ``max_bytes`` (``backups`` kept)."""
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler()
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    # force: a file asked for on the command line wins over handlers a caller installed.
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=log_file is not None)


def _raise_open_file_limit() -> None:
    """Up to the hard limit: each connection is a file descriptor (see connection_cap)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT. Exit status: 0 stopped, 1 model failed to load, 2 refused
    settings (for example a non-loopback host without --allow-remote and a token)."""
    args, config = parse_args(argv)
    configure_logging(args.log_file, args.log_max_bytes, args.log_backups)
    config = replace(config, auth_token=os.environ.get(TOKEN_ENV) or None)
    try:
        check_bind(config.host, config.allow_remote, config.auth_token, config.sagemaker_hosting)
    except BindRefused as exc:
        log.error("%s", exc)
        return 2
    dropped = scrub_environment(os.environ)  # nothing here needs AWS credentials
    if dropped:
        log.info("dropped from the environment: %s", ", ".join(dropped))
    _raise_open_file_limit()
    threads = args.threads or max(1, (os.cpu_count() or 1) // config.workers)
    log.info("config %s", json.dumps(config.public()))

    def load() -> Predictor:
        return Predictor.load(
            args.model,
            backend=args.backend,
            threads=threads,
            max_pixels=config.max_pixels,
            top_k=config.top_k,
        )

    capture = make_capture(config, args.capture_credentials)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await InferenceServer(config, load=load, capture=capture).run(
            stop, serving=lambda: _write_ready(args.ready_file)
        )

    try:
        asyncio.run(run())
    except Exception as exc:  # the model failed to load (or the port is taken): say why
        log.error("cannot serve %s: %s: %s", args.model, type(exc).__name__, exc)
        return 1
    return 0


def _write_ready(path: Path | None) -> None:
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(path)


def make_capture(config: ServerConfig, credentials: Path | None) -> DataCapture | None:
    """The data capture the settings ask for (None when off)."""
    if not config.capture_uri or config.capture_percent <= 0:
        return None
    import boto3

    keys = json.loads(credentials.read_text()) if credentials else {}
    client = boto3.session.Session().client(
        "s3",
        region_name=keys.get("region") or "us-east-1",
        endpoint_url=keys.get("endpoint_url") or None,
        aws_access_key_id=keys.get("aws_access_key_id") or None,
        aws_secret_access_key=keys.get("aws_secret_access_key") or None,
    )
    log.info(
        "capturing %g%% of requests to %s/%s/",
        config.capture_percent,
        config.capture_uri,
        config.endpoint_name,
    )
    return DataCapture(
        config.capture_uri, config.endpoint_name, config.capture_percent, s3_put(client)
    )


def _exec_without_secrets() -> None:
    """Started as a program with AWS credentials in its environment: re-execute (same pid,
    same command line) without them, so that they are not in this process at all, not even
    in /proc/<pid>/environ. The token stays; main() reads it and drops it from os.environ."""
    dropped = [name for name in secret_names(os.environ) if name != TOKEN_ENV]
    if dropped:
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)


if __name__ == "__main__":
    from inference.quick_exit import quick_exit

    _exec_without_secrets()
    raise SystemExit(quick_exit(main()))
