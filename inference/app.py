"""The HTTP application behind :mod:`inference.server`: connections, routing, invocations.

One asyncio event loop parses HTTP (:mod:`inference.protocol`) and micro-batches requests
(:mod:`inference.batcher`); model calls run on ``workers`` threads, large bodies are decoded on a
small thread pool, so a slow decode never stalls the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.batcher import MicroBatcher, Overloaded
from inference.codec import (
    RequestError,
    accepts_json,
    cheap_to_decode,
    decode_body,
    encode_predictions,
    error_body,
    parse_attributes,
)
from inference.metrics import ServerMetrics
from inference.predictor import DEFAULT_MAX_PIXELS, Predictor
from inference.protocol import (
    BodyBudget,
    HttpError,
    Limits,
    Request,
    read_request,
    render_response,
)

__all__ = ["InferenceServer", "ServerConfig"]

log = logging.getLogger("inference.server")
access_log = logging.getLogger("inference.access")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # never 0.0.0.0 by default: the local endpoint is for this machine
    port: int = 8080  # SageMaker container contract; 0 picks a free port
    workers: int = 1  # concurrent model calls; 1 loop + 1 model thread fill a 2-core box
    max_batch: int = 32  # images per model call; also the most instances one request may carry
    max_wait_ms: float = 2.0  # longest a batch waits for more images (only when more are coming)
    max_queued_images: int = 1024  # beyond this, 503 + Retry-After instead of unbounded latency
    max_body_bytes: int = 6_291_456  # 6 MiB, SageMaker's real-time payload limit
    max_pixels: int = DEFAULT_MAX_PIXELS  # declared width x height, checked before decoding
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0  # whole body, and also the time allowed to send the answer
    keepalive_timeout_s: float = 75.0
    request_timeout_s: float = 60.0  # queue + model time; SageMaker gives up at 60 s
    grace_s: float = 30.0  # SIGTERM: time allowed for requests in flight
    max_connections: int = 1024
    max_inflight_body_bytes: int = 256 * 2**20  # all bodies held at once (~40 maximum-size ones)
    top_k: int = 5
    explain_max_instances: int = 8  # saliency costs a backward pass per image
    inline_decode_bytes: int = (
        65_536  # smaller, cheap bodies are parsed on the loop (no thread hop)
    )
    access_log: bool = True

    def limits(self) -> Limits:
        return Limits(
            max_body_bytes=self.max_body_bytes,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            keepalive_timeout_s=self.keepalive_timeout_s,
        )


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Conn:
    task: asyncio.Task[Any] | None
    busy: bool = False


def _flag(value: str | None) -> bool:
    if value is None or value.lower() in ("", "false", "0", "no", "off"):
        return False
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    raise RequestError(400, f"explain must be true or false, got {value[:40]!r}")


class InferenceServer:
    def __init__(
        self,
        config: ServerConfig,
        predictor: Predictor | None = None,
        load: Callable[[], Predictor] | None = None,
    ) -> None:
        if predictor is None and load is None:
            raise ValueError("give a predictor or a load function")
        self.config = config
        self.predictor = predictor
        self._load = load
        self.metrics = ServerMetrics()
        self.port: int | None = None
        self._limits = config.limits()
        self._budget = BodyBudget(config.max_inflight_body_bytes)
        self._conns: set[_Conn] = set()
        self._draining = False
        self._server: asyncio.AbstractServer | None = None
        self._infer_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="lepton-infer")
        self._decode_pool = ThreadPoolExecutor(
            max(2, config.workers), thread_name_prefix="lepton-decode"
        )
        self._batcher: MicroBatcher | None = None

    # ------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind and start accepting (``/ping`` answers 503 until a model is loaded)."""
        self._batcher = MicroBatcher(
            self._predict,
            self._infer_pool,
            workers=self.config.workers,
            max_batch=self.config.max_batch,
            max_wait_s=self.config.max_wait_ms / 1000,
            max_queued_images=self.config.max_queued_images,
            on_batch=self.metrics.batch_size.observe,
        )
        self._batcher.start()
        self._server = await asyncio.start_server(
            self._connection,
            self.config.host,
            self.config.port,
            limit=self._limits.max_header_bytes,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("listening on http://%s:%d", self.config.host, self.port)

    async def load_model(self) -> None:
        """Run the load function (off the loop) if no predictor was given; then serve."""
        if self.predictor is None and self._load is not None:
            self.predictor = await asyncio.get_running_loop().run_in_executor(None, self._load)
        assert self.predictor is not None
        self.metrics.model_loaded = 1
        log.info(
            "model loaded: %d classes, input %s, backend %s",
            len(self.predictor.classes),
            self.predictor.input_shape,
            self.predictor.backend,
        )

    async def run(self, stop: asyncio.Event, ready: Callable[[], None] | None = None) -> None:
        """Serve until ``stop`` is set, then shut down gracefully. ``ready`` is called once
        the port is bound (before the model is loaded, if a load function was given)."""
        await self.start()
        if ready is not None:
            ready()
        try:
            await self.load_model()
        except BaseException:
            await self.shutdown()
            raise
        await stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, finish requests in flight (up to ``grace_s``), close everything."""
        self._draining = True
        self.metrics.model_loaded = 0
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):  # idle keep-alive connections: nothing to finish
            if not conn.busy and conn.task is not None:
                conn.task.cancel()
        deadline = time.monotonic() + self.config.grace_s
        while any(c.busy for c in self._conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        tasks = [c.task for c in self._conns if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._batcher is not None:
            await self._batcher.close()
        self._infer_pool.shutdown(wait=True, cancel_futures=True)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        log.info("stopped")

    # ------------------------------------------------------------------------ connections
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(asyncio.current_task())
        self._conns.add(conn)
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "-"
        try:
            if len(self._conns) > self.config.max_connections:
                await self._send(writer, 503, error_body("too many connections"), keep_alive=False)
                return
            started = time.perf_counter()

            def on_start() -> None:  # first byte of a request: in flight from here
                nonlocal started
                started = time.perf_counter()
                conn.busy = True

            while not self._draining:
                try:
                    request = await read_request(
                        reader, writer, self._limits, on_start=on_start, budget=self._budget
                    )
                except HttpError as exc:
                    await self._send(writer, exc.status, error_body(exc.message), keep_alive=False)
                    self.metrics.record_response(exc.path, exc.status)
                    self._log(client, exc.method, exc.path, exc.status, started)
                    if exc.drain:
                        await self._discard(reader, min(exc.drain, 2 * self.config.max_body_bytes))
                    return
                if request is None:
                    return
                conn.busy = True
                try:
                    status, body, ctype, extra = await self._route(request)
                finally:
                    self._budget.release(request.reserved)
                keep_alive = request.keep_alive and not self._draining
                await self._send(
                    writer,
                    status,
                    body,
                    ctype,
                    keep_alive,
                    extra,
                    head_only=request.method == "HEAD",
                )
                if request.path == "/invocations":
                    self.metrics.latency.observe(time.perf_counter() - started)
                self.metrics.record_response(request.path, status)
                self._log(client, request.method, request.path, status, started, len(body))
                conn.busy = False
                if not keep_alive:
                    return
        except (asyncio.CancelledError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug must cost one connection, never the server
            log.exception("connection handler failed")
        finally:
            self._conns.discard(conn)
            writer.close()

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        keep_alive: bool = True,
        extra: dict[str, str] | None = None,
        head_only: bool = False,
    ) -> None:
        writer.write(render_response(status, body, content_type, keep_alive, extra, head_only))
        if writer.transport.get_write_buffer_size():  # the socket took it all: nothing to wait for
            async with asyncio.timeout(self.config.body_timeout_s):
                await writer.drain()

    async def _discard(self, reader: asyncio.StreamReader, limit: int) -> None:
        """Read and drop a refused body for up to a second, so the client sees our 413."""
        try:
            async with asyncio.timeout(1.0):
                while limit > 0 and (chunk := await reader.read(min(limit, 65_536))):
                    limit -= len(chunk)
        except (TimeoutError, ConnectionError):
            pass

    def _log(
        self, client: str, method: str, path: str, status: int, started: float, size: int = 0
    ) -> None:
        if self.config.access_log:
            access_log.info(
                '%s "%s %s" %d %dB %.2fms',
                client,
                method,
                "".join(c if c.isprintable() and c != '"' else "?" for c in path[:200]),
                status,
                size,
                (time.perf_counter() - started) * 1000,
            )

    # ---------------------------------------------------------------------------- routing
    async def _route(self, request: Request) -> tuple[int, bytes, str, dict[str, str] | None]:
        path, method = request.path, request.method
        routes = {
            "/ping": "GET",
            "/invocations": "POST",
            "/metrics": "GET",
            "/execution-parameters": "GET",
        }
        if path not in routes:
            return (
                404,
                error_body(f"no such path {path[:100]!r}; use POST /invocations"),
                "application/json",
                None,
            )
        allowed = routes[path]
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            return (
                405,
                error_body(f"{method} not allowed on {path}"),
                "application/json",
                {"Allow": allowed},
            )
        loaded = self.predictor is not None and self.metrics.model_loaded and not self._draining
        if path == "/ping":
            if loaded:
                return 200, b'{"status":"healthy"}', "application/json", None
            return (
                503,
                error_body("model not loaded" if not self._draining else "shutting down"),
                "application/json",
                None,
            )
        if path == "/metrics":
            self.metrics.queued_images = self._batcher.queued_images if self._batcher else 0
            return (
                200,
                self.metrics.render().encode(),
                "text/plain; version=0.0.4; charset=utf-8",
                None,
            )
        if path == "/execution-parameters":
            doc = {
                "MaxConcurrentTransforms": self.config.workers,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": self.config.max_body_bytes // 2**20,
            }
            return 200, json.dumps(doc).encode(), "application/json", None
        if not loaded:
            return 503, error_body("model not loaded"), "application/json", {"Retry-After": "1"}
        self.metrics.in_flight += 1
        try:
            return await self._invoke(request)
        except RequestError as exc:
            return exc.status, error_body(exc.message, exc.reason), "application/json", None
        except Overloaded as exc:
            return (
                503,
                error_body(f"overloaded, retry later ({exc})"),
                "application/json",
                {"Retry-After": "1"},
            )
        except TimeoutError:
            return (
                503,
                error_body(f"not answered within {self.config.request_timeout_s:g} s"),
                "application/json",
                {"Retry-After": "1"},
            )
        except Exception:
            log.exception("invocation failed")
            return 500, error_body("internal error while predicting"), "application/json", None
        finally:
            self.metrics.in_flight -= 1

    async def _invoke(self, request: Request) -> tuple[int, bytes, str, dict[str, str] | None]:
        predictor, batcher = self.predictor, self._batcher
        assert predictor is not None and batcher is not None
        if not accepts_json(request.headers.get("accept")):
            raise RequestError(
                406,
                f"cannot answer Accept {request.headers['accept'][:100]!r}; only application/json",
            )
        attrs = parse_attributes(
            request.query, request.headers.get("x-amzn-sagemaker-custom-attributes")
        )
        explain = _flag(attrs.get("explain"))
        top_k = (
            predictor.top_k
            if attrs.get("top_k") is None
            else _top_k(attrs["top_k"], len(predictor.classes))
        )
        content_type = request.headers.get("content-type")
        batcher.announce()
        try:
            if cheap_to_decode(request.body, content_type, self.config.inline_decode_bytes):
                decoded = decode_body(predictor, request.body, content_type, self.config.max_batch)
            else:
                decoded = await asyncio.get_running_loop().run_in_executor(
                    self._decode_pool,
                    decode_body,
                    predictor,
                    request.body,
                    content_type,
                    self.config.max_batch,
                )
        except BaseException:
            batcher.withdraw()
            raise
        pixels = decoded.pixels
        if explain and len(pixels) > self.config.explain_max_instances:
            batcher.withdraw()
            raise RequestError(
                400,
                f"explain=true is limited to {self.config.explain_max_instances} instances per request",
            )
        async with asyncio.timeout(self.config.request_timeout_s):
            probs = await batcher.submit(pixels)
        self.metrics.images += len(pixels)
        saliency = None
        if explain:
            saliency = await asyncio.get_running_loop().run_in_executor(
                self._infer_pool, _saliencies, predictor, pixels, probs
            )
        return (
            200,
            encode_predictions(predictor.top_k_labels(probs, top_k), saliency),
            "application/json",
            None,
        )

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        assert self.predictor is not None
        return self.predictor.predict_arrays(batch)


def _top_k(value: str, classes: int) -> int:
    if not value.isdigit() or not 1 <= int(value) <= classes:
        raise RequestError(400, f"top_k must be an integer in 1..{classes}, got {value[:40]!r}")
    return int(value)


def _saliencies(predictor: Predictor, pixels: np.ndarray, probs: np.ndarray) -> list[bytes]:
    try:
        return [
            predictor.saliency(img, int(np.argmax(p))) for img, p in zip(pixels, probs, strict=True)
        ]
    except FileNotFoundError as exc:
        raise RequestError(501, str(exc)) from None
