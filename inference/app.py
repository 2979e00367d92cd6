"""The ASGI application behind :mod:`inference.server`: routing, auth, invocations.

uvicorn (httptools) runs the connections (:mod:`inference.connections`); this app reads bodies
under their limits (:mod:`inference.body`), decodes them off the event loop on a bounded pool
(:mod:`inference.decodepool`) and micro-batches the pixels (:mod:`inference.batcher`) onto the
model thread(s). Decode, queue, model and explanation all run inside the request timeout, and
all of it is cancelled when the client goes away.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.batcher import MicroBatcher, Overloaded
from inference.body import BodyBudget, BodyRefused, ClientGone, content_length, discard, read_body
from inference.capture import DataCapture
from inference.codec import (
    DecodeLimits,
    RequestError,
    accepts_json,
    decode_body,
    decode_inline,
    encode_predictions,
    error_body,
    parse_attributes,
)
from inference.config import ServerConfig
from inference.decodepool import DecodePool
from inference.metrics import CONTENT_TYPE as METRICS_TYPE
from inference.metrics import ServerMetrics
from inference.predictor import Predictor
from inference.security import token_matches

__all__ = ["InferenceApp"]

log = logging.getLogger("inference.server")
access_log = logging.getLogger("inference.access")

ROUTES = {"/ping": "GET", "/invocations": "POST", "/metrics": "GET", "/execution-parameters": "GET"}
OPEN_PATHS = frozenset({"/ping"})  # SageMaker's health check carries no credentials
JSON = "application/json"


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def _error(
    status: int,
    message: str,
    reason: str | None = None,
    retry: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    extra = headers + ((("Retry-After", "1"),) if retry else ())
    return Response(status, error_body(message, reason), JSON, extra)


def _flag(value: str | None) -> bool:
    if value is None or value.lower() in ("", "false", "0", "no", "off"):
        return False
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    raise RequestError(400, f"explain must be true or false, got {value[:40]!r}")


def _top_k(value: str, classes: int) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 6) or not (
        1 <= int(value) <= classes
    ):
        raise RequestError(400, f"top_k must be an integer in 1..{classes}, got {value[:40]!r}")
    return int(value)


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-case names (uvicorn's), repeated headers joined with ", "."""
    out: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


class InferenceApp:
    """ASGI 3 callable. The server sets ``predictor`` (once loaded), ``batcher`` and
    ``decode_pool`` before traffic, and ``draining`` on SIGTERM."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.predictor: Predictor | None = None
        self.batcher: MicroBatcher | None = None
        self.decode_pool: DecodePool | None = None
        self.capture: DataCapture | None = None  # set by the server when capture is on
        self.draining = False
        self.budget = BodyBudget(config.max_inflight_body_bytes)
        self.limits = DecodeLimits(
            max_instances=config.max_batch,
            max_request_pixels=config.max_request_pixels,
            max_parse_bytes=config.max_parse_bytes,
        )

    @property
    def serving(self) -> bool:
        return self.predictor is not None and not self.draining

    # --------------------------------------------------------------------------- ASGI
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        headers = _headers(scope["headers"])
        has_body = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
        unread = has_body  # body bytes the client may still send (refused before reading)
        try:
            if scope["http_version"] not in ("1.0", "1.1"):
                raise BodyRefused(505, "unsupported HTTP version; use HTTP/1.1", unread=True)
            query = scope["query_string"].decode("latin-1")
            response, body_read = await self._route(method, path, query, headers, receive)
            unread = has_body and not body_read
            close = unread
        except BodyRefused as exc:
            response = _error(exc.status, exc.message, retry=exc.status == 503)
            unread, close = has_body and exc.unread, True
        except ClientGone:
            self.metrics.disconnects.inc()
            self._log(scope, 499, started)  # nginx's code for "client closed the request"
            return
        except Exception:  # a bug: one JSON 500, never a dead server
            log.exception("request failed")
            response, close = _error(500, "internal error"), True
        close = close or self.draining
        if unread and "100-continue" not in headers.get("expect", "").lower():
            # Read and drop the rest for a moment, so a client that sends the whole body before
            # reading (http.client does) sees this answer rather than a connection reset.
            await self._send(send, response, close, scope, headers, start_only=True)
            await discard(receive, 2 * self.config.max_body_bytes)
            await send({"type": "http.response.body", "body": response.body})
        else:
            await self._send(send, response, close, scope, headers)
        if path == "/invocations":
            self.metrics.latency.observe(time.perf_counter() - started)
        self.metrics.record_response(path, response.status)
        self._log(scope, response.status, started, len(response.body))

    async def _send(
        self,
        send: Any,
        response: Response,
        close: bool,
        scope: dict[str, Any],
        headers: dict[str, str],
        start_only: bool = False,
    ) -> None:
        out = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
        ]
        out += [(k.lower().encode(), v.encode("latin-1")) for k, v in response.headers]
        if close:
            out.append((b"connection", b"close"))
        elif (
            scope["http_version"] == "1.1" and "close" not in headers.get("connection", "").lower()
        ):
            out.append((b"connection", b"keep-alive"))
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        if not start_only:
            await send({"type": "http.response.body", "body": response.body})

    def _log(self, scope: dict[str, Any], status: int, started: float, size: int = 0) -> None:
        if self.config.access_log:
            client = scope.get("client")
            access_log.info(
                '%s "%s %s" %d %dB %.2fms',
                client[0] if client else "-",
                scope["method"],
                "".join(c if c.isprintable() and c != '"' else "?" for c in scope["path"][:200]),
                status,
                size,
                (time.perf_counter() - started) * 1000,
            )

    # ------------------------------------------------------------------------ routing
    async def _route(
        self, method: str, path: str, query: str, headers: dict[str, str], receive: Any
    ) -> tuple[Response, bool]:
        """The response, and whether the request body was read."""
        allowed = ROUTES.get(path)
        if allowed is None:
            return _error(404, f"no such path {path[:100]!r}; use POST /invocations"), False
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            return _error(
                405, f"{method} not allowed on {path}", headers=(("Allow", allowed),)
            ), False
        if path == "/ping":
            if self.serving:
                return Response(200, b'{"status":"healthy"}'), False
            why = "shutting down" if self.draining else "model not loaded"
            return _error(503, why), False
        token = self.config.auth_token
        if token is not None and not token_matches(headers.get("authorization"), token):
            return _error(
                401, "missing or wrong bearer token", headers=(("WWW-Authenticate", "Bearer"),)
            ), False
        if path == "/metrics":
            return Response(200, self.metrics.render(), METRICS_TYPE), False
        if path == "/execution-parameters":
            doc = {
                "MaxConcurrentTransforms": self.config.workers,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": self.config.max_body_bytes // 2**20,
            }
            return Response(200, json.dumps(doc).encode()), False
        # While draining (SIGTERM) requests that reached this server are still answered, with
        # Connection: close; only /ping says it is going (a blue/green switch loses nothing).
        if self.predictor is None:
            return _error(503, "model not loaded", retry=True), False
        try:
            return await self._invocation(query, headers, receive), True
        except BodyRefused:
            raise
        except RequestError as exc:  # refused before the body was read
            return _error(exc.status, exc.message, exc.reason), False

    # -------------------------------------------------------------------- invocations
    async def _invocation(self, query: str, headers: dict[str, str], receive: Any) -> Response:
        predictor = self.predictor
        assert predictor is not None
        if not accepts_json(headers.get("accept")):
            raise RequestError(
                406, f"cannot answer Accept {headers['accept'][:100]!r}; only application/json"
            )
        attrs = parse_attributes(query, headers.get("x-amzn-sagemaker-custom-attributes"))
        explain = _flag(attrs.get("explain"))
        top_k = predictor.top_k
        if attrs.get("top_k") is not None:
            top_k = _top_k(attrs["top_k"], len(predictor.classes))
        length = (
            None
            if "transfer-encoding" in headers
            else content_length(headers.get("content-length"))
        )
        body, reserved = await read_body(
            receive,
            length,
            max_bytes=self.config.max_body_bytes,
            timeout_s=self.config.body_timeout_s,
            budget=self.budget,
        )
        self.metrics.in_flight.inc()
        task = asyncio.current_task()
        assert task is not None
        watch = asyncio.ensure_future(receive())  # returns once the client has gone
        answered = False

        def client_gone(_: object) -> None:  # cancels decode, queue wait, model wait
            if not answered:  # callbacks run between task steps: no race with the flag
                task.cancel()

        watch.add_done_callback(client_gone)
        try:
            return await self._answer(predictor, body, headers.get("content-type"), explain, top_k)
        except asyncio.CancelledError:
            if watch.done() and not watch.cancelled() and task.uncancel() == 0:
                raise ClientGone from None
            raise
        finally:
            answered = True
            watch.cancel()
            self.budget.release(reserved)
            self.metrics.in_flight.dec()

    async def _answer(
        self, predictor: Predictor, body: bytes, content_type: str | None, explain: bool, top_k: int
    ) -> Response:
        batcher, pool = self.batcher, self.decode_pool
        assert batcher is not None and pool is not None
        timeout = self.config.request_timeout_s
        batcher.announce()
        queued = False
        try:
            async with asyncio.timeout(timeout):
                decoded = decode_inline(
                    predictor, body, content_type, self.limits, self.config.inline_decode_bytes
                )
                if decoded is None:
                    decoded = await pool.run(
                        functools.partial(decode_body, predictor, body, content_type, self.limits)
                    )
                pixels = decoded.pixels
                if explain and len(pixels) > self.config.explain_max_instances:
                    raise RequestError(
                        400,
                        f"explain=true is limited to {self.config.explain_max_instances} "
                        "instances per request",
                    )
                queued = True
                probs = await batcher.submit(pixels)
                saliency = None
                if explain:
                    saliency = await batcher.call(
                        functools.partial(_saliencies, predictor, pixels, probs), len(pixels)
                    )
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.reason, retry=exc.status == 503)
        except Overloaded as exc:
            return _error(503, f"overloaded, retry later ({exc})", retry=True)
        except TimeoutError:
            return _error(503, f"not answered within {timeout:g} s", retry=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("invocation failed")
            return _error(500, "internal error while predicting")
        finally:
            if not queued:
                batcher.withdraw()
        self.metrics.images.inc(len(pixels))
        answer = encode_predictions(predictor.top_k_labels(probs, top_k), saliency)
        if self.capture is not None:  # sampled, queued or dropped: never waits
            self.capture.offer(body, content_type or "", answer, JSON)
        return Response(200, answer)


def _saliencies(predictor: Predictor, pixels: np.ndarray, probs: np.ndarray) -> list[bytes]:
    try:
        return [
            predictor.saliency(img, int(np.argmax(p))) for img, p in zip(pixels, probs, strict=True)
        ]
    except FileNotFoundError as exc:
        raise RequestError(501, str(exc)) from None
