"""Queues and timeouts of an in-thread server with a patched predictor: the decode queue is
bounded (503 + Retry-After when full), drops the job of a client that left, and decoding counts
inside the request timeout; explanations wait in the model queue and within the timeout.
Endpoint defects of issue 13, one class per test: each failed against the hand-written server.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading

import numpy as np
from PIL import Image

from inference.predictor import Predictor
from inference.server import ServerConfig, serve_in_thread
from tests.integration.server_helpers import (
    _error_of,
    _metric,
    _status,
    _wait_for,
    encode,
    request,
    send,
)


def test_decode_queue_is_bounded_timed_and_cancelled(own_predictor: Predictor) -> None:
    gate, entered = threading.Event(), threading.Event()
    calls: list[bytes] = []
    original = own_predictor.preprocess

    def blocking(data: bytes) -> np.ndarray:
        calls.append(data)
        entered.set()
        gate.wait(30)
        return original(data)

    own_predictor.preprocess = blocking  # type: ignore[method-assign]
    first, second, third = (encode(Image.new("L", (8, 8), v), "PNG") for v in (10, 20, 30))
    config = ServerConfig(port=0, access_log=False, decode_threads=1, decode_queue=2)
    try:
        with (
            serve_in_thread(own_predictor, config) as handle,
            concurrent.futures.ThreadPoolExecutor(2) as pool,
        ):
            port = handle.port
            a = pool.submit(send, port, request("POST", "/invocations", first), 30)
            assert entered.wait(10)  # A is decoding (and blocked)
            leaver = socket.create_connection(("127.0.0.1", port))
            leaver.sendall(request("POST", "/invocations", second))  # B waits for the decoder
            _wait_for(lambda: _metric(port, "lepton_decode_jobs") == 2, "B queued")
            full = send(port, request("POST", "/invocations", third))  # C: no room
            assert _status(full) == 503 and b"retry-after: 1" in full.lower()
            leaver.close()  # B's client leaves: its queued decode is dropped
            _wait_for(lambda: _metric(port, "lepton_client_disconnects_total") == 1, "B gone")
            gate.set()
            assert _status(a.result(30)) == 200
            _wait_for(lambda: _metric(port, "lepton_decode_jobs") == 0, "decoder idle")
        assert calls == [first]  # B was never decoded
    finally:
        gate.set()

    # Decoding counts inside the request timeout.
    gate.clear()
    config = ServerConfig(port=0, access_log=False, request_timeout_s=0.5)
    with serve_in_thread(own_predictor, config) as handle:
        try:
            answer = send(handle.port, request("POST", "/invocations", first), 30)
        finally:
            gate.set()  # the decode thread must finish before the server can stop
        assert _status(answer) == 503 and "within" in _error_of(answer)["error"]


def test_explain_waits_in_the_queue_and_within_the_timeout(own_predictor: Predictor) -> None:
    gate, entered = threading.Event(), threading.Event()

    def blocking_saliency(array: np.ndarray, class_index: int | None = None) -> bytes:
        entered.set()
        gate.wait(30)
        return b"png"

    own_predictor.saliency = blocking_saliency  # type: ignore[method-assign]
    img = encode(Image.new("L", (8, 8), 128), "PNG")
    explain = request("POST", "/invocations?explain=true", img)
    try:
        config = ServerConfig(port=0, access_log=False, request_timeout_s=0.5)
        with serve_in_thread(own_predictor, config) as handle:
            try:
                answer = send(handle.port, explain, 30)  # the saliency never finishes in time
            finally:
                gate.set()  # the model thread must finish before the server can stop
            assert _status(answer) == 503 and "within" in _error_of(answer)["error"]
        gate.clear()
        entered.clear()
        config = ServerConfig(port=0, access_log=False, max_queued_images=1, max_wait_ms=0)
        with (
            serve_in_thread(own_predictor, config) as handle,
            concurrent.futures.ThreadPoolExecutor(2) as pool,
        ):
            port = handle.port
            first = pool.submit(send, port, explain, 30)
            assert entered.wait(10)  # its saliency holds the model worker
            second = pool.submit(send, port, explain, 30)
            _wait_for(lambda: _metric(port, "lepton_queued_images") == 1, "second queued")
            full = send(port, request("POST", "/invocations", img))  # the queue is full
            assert _status(full) == 503 and "overloaded" in _error_of(full)["error"]
            gate.set()
            assert _status(first.result(30)) == 200 and _status(second.result(30)) == 200
    finally:
        gate.set()
