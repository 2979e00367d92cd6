"""The server's lifecycle: bind, serve with uvicorn, load the model, drain, stop.

One asyncio event loop runs uvicorn (connections, :mod:`inference.connections`), the ASGI app
(:mod:`inference.app`) and the micro-batcher; the model runs on ``workers`` threads, decoding
on ``decode_threads`` more. SIGTERM (or :meth:`InferenceServer.shutdown`): ``/ping`` turns 503,
the socket stops accepting, idle connections close, requests in flight get their answers (up
to ``grace_s``), then the pools stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import uvicorn

from inference.app import InferenceApp
from inference.batcher import MicroBatcher
from inference.capture import DataCapture
from inference.config import ServerConfig
from inference.connections import ConnectionPolicy, protocol_class
from inference.decodepool import DecodePool
from inference.metrics import ServerMetrics
from inference.predictor import Predictor
from inference.security import check_bind

__all__ = ["InferenceServer"]

log = logging.getLogger("inference.server")
access_log = logging.getLogger("inference.access")

FD_RESERVE = 64  # file descriptors kept for the model, logs and the listening socket


BACKLOG = 2048
SO_ATTACH_REUSEPORT_CBPF = 51  # Linux <asm-generic/socket.h>; Python's socket module lacks it


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Signals are the caller's (main() maps SIGTERM to a graceful stop); uvicorn's own
        handlers would re-raise SIGTERM after the drain and turn exit status 0 into -15."""
        yield


def _bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """One listening socket on ``host`` (its IPv4 address first, if it has both)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = min(infos, key=lambda info: info[0] != socket.AF_INET)
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def steer_new_connections_here(sock: socket.socket, backlog: int) -> None:
    """Of the sockets sharing this port, send every new connection to the newest (index 1 of
    two: this one when it joins beside the running server; alone, the kernel's own choice).

    Without it the kernel hashes new connections over both servers, and those still queued on
    the old one when it closes are reset. With it the old one's queue empties while it keeps
    accepting, and the old server stops without a lost connection. A classic BPF program
    (`ret #1`, SO_ATTACH_REUSEPORT_CBPF) attached to the group; needs no privilege.
    """
    import ctypes

    class Instruction(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_ushort),
            ("jt", ctypes.c_ubyte),
            ("jf", ctypes.c_ubyte),
            ("k", ctypes.c_uint32),
        ]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Instruction))]

    sock.listen(backlog)  # the group forms at listen(); asyncio's listen() later is a no-op
    code = (Instruction * 1)(Instruction(0x06, 0, 0, 1))  # BPF_RET | BPF_K, k = 1
    program = Program(1, ctypes.cast(code, ctypes.POINTER(Instruction)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(memoryview(program)))


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to what the open-file limit allows (each connection is a socket)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


class InferenceServer:
    def __init__(
        self,
        config: ServerConfig,
        predictor: Predictor | None = None,
        load: Callable[[], Predictor] | None = None,
        capture: DataCapture | None = None,
    ) -> None:
        if predictor is None and load is None:
            raise ValueError("give a predictor or a load function")
        self.config = config
        self.metrics = ServerMetrics()
        self.app = InferenceApp(config, self.metrics)
        self.app.capture = capture
        if capture is not None:
            self.metrics.watch("lepton_captured_requests", lambda: capture.captured)
            self.metrics.watch("lepton_capture_dropped", lambda: capture.dropped)
            self.metrics.watch("lepton_capture_failed", lambda: capture.failed)
        self.port: int | None = None
        self._predictor = predictor
        self._load = load
        self._infer_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="lepton-infer")
        self._decode_pool = DecodePool(config.decode_threads, config.decode_queue)
        self._batcher: MicroBatcher | None = None
        self._uvicorn: _Uvicorn | None = None
        # connections with a request dispatched and not yet answered (set by start)
        self.requests_in_progress: Callable[[], int] = lambda: 0
        self._serving: asyncio.Task[None] | None = None

    @property
    def predictor(self) -> Predictor | None:
        return self.app.predictor

    @property
    def loaded(self) -> bool:
        """A model is loaded and the server is not draining (what ``/ping`` reports)."""
        return self.app.serving

    # ------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind and start accepting (``/ping`` answers 503 until a model is loaded)."""
        cfg = self.config
        check_bind(
            cfg.host, cfg.allow_remote, cfg.auth_token, cfg.sagemaker_hosting
        )  # also for programmatic use
        policy = ConnectionPolicy(
            header_timeout_s=cfg.header_timeout_s,
            max_header_bytes=cfg.max_header_bytes,
            max_headers=cfg.max_headers,
            max_connections=connection_cap(cfg.max_connections),
            on_refused=self._refused,
            on_evicted=self.metrics.evicted_connections.inc,
        )
        self._batcher = MicroBatcher(
            self._predict,
            self._infer_pool,
            workers=cfg.workers,
            max_batch=cfg.max_batch,
            max_wait_s=cfg.max_wait_ms / 1000,
            max_queued_images=cfg.max_queued_images,
            on_batch=self.metrics.batch_size.observe,
            in_progress=policy.requests_in_progress,
        )
        self.requests_in_progress = policy.requests_in_progress
        self._batcher.start()
        self.app.batcher, self.app.decode_pool = self._batcher, self._decode_pool
        server = _Uvicorn(
            uvicorn.Config(
                self.app,
                http=protocol_class(policy),
                ws="none",
                lifespan="off",
                interface="asgi3",
                log_config=None,
                access_log=False,  # the app writes its own, with latency and size
                proxy_headers=False,  # nobody's X-Forwarded-For is trusted
                server_header=False,
                backlog=BACKLOG,
                timeout_keep_alive=math.ceil(cfg.keepalive_timeout_s),
                timeout_graceful_shutdown=math.ceil(cfg.grace_s),
            )
        )
        sock = _bind(cfg.host, cfg.port, cfg.reuse_port)
        if cfg.reuse_port:
            steer_new_connections_here(sock, BACKLOG)
        self.port = int(sock.getsockname()[1])
        self._uvicorn = server
        self._serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._serving.done():
                self._serving.result()  # raises why it stopped
                raise RuntimeError("uvicorn stopped during start-up")
            await asyncio.sleep(0.005)
        batcher, pool = self._batcher, self._decode_pool
        self.metrics.watch("lepton_queued_images", lambda: batcher.queued_images)
        self.metrics.watch("lepton_decode_jobs", lambda: pool.jobs)
        self.metrics.watch("lepton_open_connections", lambda: len(server.server_state.connections))
        budget = self.app.budget
        self.metrics.watch("lepton_request_body_bytes", lambda: budget.in_use)
        log.info(
            "listening on http://%s:%d (max %d connections)",
            cfg.host,
            self.port,
            policy.max_connections,
        )

    async def load_model(self) -> None:
        """Run the load function (off the loop) if no predictor was given; then serve."""
        predictor = self._predictor
        if predictor is None:
            assert self._load is not None
            predictor = await asyncio.get_running_loop().run_in_executor(None, self._load)
        self.app.predictor = predictor
        self.metrics.model_loaded.set(1)
        log.info(
            "model loaded: %d classes, input %s, backend %s",
            len(predictor.classes),
            predictor.input_shape,
            predictor.backend,
        )

    async def run(
        self,
        stop: asyncio.Event,
        ready: Callable[[], None] | None = None,
        serving: Callable[[], None] | None = None,
    ) -> None:
        """Serve until ``stop`` is set, then shut down gracefully. ``ready`` is called once
        the port is bound (before the model is loaded, if a load function was given),
        ``serving`` once the model is loaded and requests are answered."""
        if self.config.reuse_port:
            # Sharing the port: a listening socket takes connections at once, so it opens only
            # once the model is loaded (the other server answers until then).
            await self.load_model()
            await self.start()
            if ready is not None:
                ready()
        else:
            await self.start()
            if ready is not None:
                ready()
            try:
                await self.load_model()
            except BaseException:
                await self.shutdown()
                raise
        if serving is not None:
            serving()
        assert self._serving is not None
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopping, self._serving}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, finish requests in flight (up to ``grace_s``), close everything."""
        self.app.draining = True
        self.metrics.model_loaded.set(0)
        if self._uvicorn is not None and self._serving is not None:
            self._uvicorn.should_exit = True
            try:
                await self._serving
            except Exception:
                log.exception("HTTP server failed")
        if self._batcher is not None:
            await self._batcher.close()
        self._infer_pool.shutdown(wait=True, cancel_futures=True)
        self._decode_pool.shutdown()
        if self.app.capture is not None:  # what was captured is written before exit
            await asyncio.get_running_loop().run_in_executor(None, self.app.capture.close)
        log.info("stopped")

    # ------------------------------------------------------------------------ internals
    def _predict(self, batch: np.ndarray) -> np.ndarray:
        predictor = self.app.predictor
        assert predictor is not None
        return predictor.predict_arrays(batch)

    def _refused(self, client: str, status: int) -> None:
        """A request refused by the connection layer (malformed, too slow, too big a head)."""
        self.metrics.record_response("other", status)
        if self.config.access_log:
            access_log.info('%s "- -" %d', client, status)
