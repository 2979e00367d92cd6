"""Resource limits of the server process (default limits, a 3 s header deadline): JSON bodies
are type- and size-checked before anything is allocated, decoding has a pixel budget and never
runs on the event loop, an idle-connection flood cannot lock a client out, and a chunked upload
is charged for the bytes that arrived. Endpoint defects of issue 13, one class per test: each
failed against the hand-written server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from inference.predictor import Predictor
from inference.server import ServerConfig, serve_in_thread
from tests.integration.server_helpers import (
    MAX_BODY,
    _error_of,
    _metric,
    _start_server,
    _status,
    _wait_for,
    encode,
    png_declaring,
    request,
    send,
)

JSON = "application/json"


@pytest.fixture(scope="module")
def plain_server(trained_model_dir: Path) -> Iterator[tuple[int, psutil.Process]]:
    """Default limits, except a 3 s header deadline (the idle-flood test waits for it)."""
    proc, port = _start_server(trained_model_dir, "--header-timeout-s", "3", "--no-access-log")
    yield port, psutil.Process(proc.pid)
    proc.terminate()
    proc.wait(30)


class PeakRss:
    """Peak RSS of a process while the block runs, sampled every 5 ms."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.before = self.peak = proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / 2**20


def test_json_types_and_sizes_checked_before_allocating(
    plain_server: tuple[int, psutil.Process],
) -> None:
    """Strings / ragged arrays used to become a numpy array first: a 113 KB body of strings
    (one 100,000 characters long) asked for a 1.3 GB string array before the 400."""
    port, proc = plain_server
    strings = json.dumps([[["x" * 100_000] + ["y"] * 3_300]]).encode()
    ragged = json.dumps([[[1] * 3, [1] * 1_000] * 1_000]).encode()
    mixed = json.dumps({"instances": [[[["7"] * 1_000] * 8] * 8]}).encode()
    for body in (strings, ragged, mixed):
        with PeakRss(proc) as rss:
            answer = send(port, request("POST", "/invocations", body, "application/json"), 30)
        assert _status(answer) == 400, answer[:300]
        _error_of(answer)
        assert rss.growth_mb < 150, f"{rss.growth_mb:.0f} MiB for a {len(body)} byte body"
    # 6 MB of empty objects would be ~2 million dicts (~500 MB): refused unparsed, 413.
    objects = b"[" + b"{}," * 2_000_000 + b"{}]"
    assert len(objects) <= MAX_BODY
    with PeakRss(proc) as rss:
        answer = send(port, request("POST", "/invocations", objects, "application/json"), 30)
    assert _status(answer) == 413 and "MiB" in _error_of(answer)["error"]
    assert rss.growth_mb < 150, f"{rss.growth_mb:.0f} MiB"
    assert _status(send(port, request("GET", "/ping", b"", None))) == 200


def _b64_png(img: Image.Image) -> str:
    return base64.b64encode(encode(img, "PNG")).decode()


def test_decode_has_a_pixel_budget_and_never_runs_on_the_event_loop(
    plain_server: tuple[int, psutil.Process], own_predictor: Predictor
) -> None:
    port, _ = plain_server
    # Two images of 16 MP each: under the 25 MP image limit, over the 25 MP request budget.
    big = base64.b64encode(png_declaring(4000, 4000)).decode()
    body = json.dumps({"instances": [{"b64": big}, {"b64": big}]}).encode()
    answer = send(port, request("POST", "/invocations", body, "application/json"))
    assert _status(answer) == 413 and "budget" in _error_of(answer)["error"]

    threads: list[str] = []
    original = own_predictor.preprocess

    def recording(data: bytes) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return original(data)

    own_predictor.preprocess = recording  # type: ignore[method-assign]
    small = Image.new("L", (8, 8), 99)
    bodies = [
        (encode(small, "PNG"), "image/png"),
        (json.dumps({"b64": _b64_png(small)}).encode(), "application/json"),
        # "b64" spelt with JSON escapes: once a way around the decode-off-the-loop check.
        (b'{"\\u0062\\u0036\\u0034": "%s"}' % _b64_png(small).encode(), "application/json"),
        (b'{"instances": [{"\\u0062\\u0036\\u0034": "%s"}]}' % _b64_png(small).encode(), JSON),
    ]
    with serve_in_thread(own_predictor, ServerConfig(port=0, access_log=False)) as handle:
        for data, ctype in bodies:
            assert _status(send(handle.port, request("POST", "/invocations", data, ctype))) == 200
    assert len(threads) == len(bodies)
    assert all(name.startswith("lepton-decode") for name in threads), threads


def test_idle_connection_flood_cannot_lock_out_a_client(
    plain_server: tuple[int, psutil.Process],
) -> None:
    """1,100 sockets that never send a byte (more than the 1,024 connections allowed), and 20
    that trickle a request head one byte every 0.3 s: a real request is still served at once,
    and the silent and slow ones are closed after the 3 s header deadline."""
    port, _ = plain_server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1_400:
        if hard != resource.RLIM_INFINITY and hard < 1_400:
            pytest.skip(f"needs >= 1,400 file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1_400, hard))
    silent = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(1_100)]
    slow = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(20)]
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    try:
        time.sleep(0.5)  # the server has accepted them all
        reference = encode(Image.new("L", (8, 8), 128), "PNG")
        assert _status(send(port, request("POST", "/invocations", reference))) == 200
        started = time.monotonic()
        for i in range(len(head)):  # bytes keep coming: the deadline is not extended
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(head[i : i + 1])
            if time.monotonic() - started > 8:
                break
            time.sleep(0.3)
        answers = []
        for sock in slow:
            with contextlib.suppress(OSError):
                answers.append(sock.recv(65536))
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[:3]
        for sock in silent:  # closed by the server (evicted, or at the header deadline)
            with contextlib.suppress(ConnectionResetError):  # reset: closed too
                assert sock.recv(1) == b""
        assert _metric(port, "lepton_evicted_connections_total") >= 1
        assert _status(send(port, request("POST", "/invocations", reference))) == 200
    finally:
        for sock in silent + slow:
            sock.close()


def test_chunked_uploads_count_what_arrived_in_one_buffer(
    plain_server: tuple[int, psutil.Process], own_predictor: Predictor
) -> None:
    port, proc = plain_server
    pixels = json.dumps(np.full((8, 8, 1), 200).tolist()).encode()
    body = pixels + b" " * (1_000_000 - len(pixels))  # 1 MB, sent as 1-byte chunks (6 MB)
    chunked = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body))) + b"0\r\n\r\n"
    head = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with PeakRss(proc) as rss:
        answer = send(port, head + chunked, 60)
    assert _status(answer) == 200, answer[:300]
    assert rss.growth_mb < 48, f"{rss.growth_mb:.0f} MiB for a 1 MB body"  # was ~120 MB

    # The in-flight body budget is charged for bytes received, not for the limit.
    config = ServerConfig(port=0, access_log=False, max_inflight_body_bytes=1000, body_timeout_s=10)
    with (
        serve_in_thread(own_predictor, config) as handle,
        socket.create_connection(("127.0.0.1", handle.port), timeout=10) as holder,
    ):
        holder.sendall(head + b"64\r\n" + b"\0" * 100 + b"\r\n")  # 100 bytes so far
        _wait_for(lambda: _metric(handle.port, "lepton_request_body_bytes") == 100, "100 held")
        other = send(handle.port, request("POST", "/invocations", b"\0" * 200))
        assert _status(other) == 400  # admitted: 100 + 200 bytes fit the budget
        holder.sendall(b"3e8\r\n" + b"\0" * 1000 + b"\r\n")  # now it would hold 1,100
        answer = holder.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
