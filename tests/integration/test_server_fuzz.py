"""Fuzz the server process with >= 500 malformed (and some odd but valid) requests.

Every request has an asserted answer: a 4xx with a JSON ``error``, or 200 where the input is
really valid (CMYK, 16-bit, palette + alpha, EXIF-rotated, 1 x 10000 images are classified).
The server runs as its own process, so a crash cannot hide and its RSS is measurable.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import os
import pickle
import random
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from inference.predictor import Predictor
from inference.server import ServerConfig, serve_in_thread

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_BODY = 6_291_456
JSON = "application/json"
SEED = 20240607


@dataclass
class Case:
    kind: str
    raw: bytes  # the whole request, head and body
    expected: frozenset[int]
    wait_s: float = 10.0


@pytest.fixture(scope="module")
def server_port(trained_model_dir: Path) -> Iterator[tuple[int, psutil.Process]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "inference.server", "--model", str(trained_model_dir), "--port", str(port),
        "--header-timeout-s", "1", "--body-timeout-s", "1", "--no-access-log",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    deadline = time.monotonic() + 60
    while _status(send(port, request("GET", "/ping", b"", None), 2)) != 200:
        assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
    yield port, psutil.Process(proc.pid)
    proc.terminate()
    proc.wait(30)


def request(
    method: str, path: str, body: bytes, content_type: str | None = "image/png", **headers: str
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def send(port: int, data: bytes, wait_s: float = 10.0) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)
    except (ConnectionError, TimeoutError) as exc:
        return f"NO ANSWER {exc!r}".encode()


def _status(answer: bytes) -> int:
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return -1


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 65536))
        + chunk(b"IEND", b"")
    )


def build_cases(rng: random.Random, nprng: np.random.Generator) -> list[Case]:
    ok, bad, e400, e413, e415 = (
        frozenset({200}),
        frozenset({400}),
        frozenset({400}),
        frozenset({413}),
        frozenset({415}),
    )
    cases: list[Case] = []

    def add(
        kind: str,
        body: bytes,
        ctype: str | None,
        expected: frozenset[int],
        path: str = "/invocations",
        **h: str,
    ) -> None:
        cases.append(Case(kind, request("POST", path, body, ctype, **h), expected))

    def photo(w: int = 40, h: int = 30) -> Image.Image:
        return Image.fromarray(nprng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    valid_png, valid_jpeg = encode(photo(), "PNG"), encode(photo(), "JPEG")
    for _ in range(80):
        add(
            "random bytes",
            rng.randbytes(rng.randint(1, 4096)),
            rng.choice(["image/png", "image/jpeg"]),
            e400 | e415,
        )
    for _ in range(60):
        src = rng.choice(
            [valid_png, valid_jpeg, encode(photo(64, 64), "WEBP"), encode(photo(64, 64), "BMP")]
        )
        add("truncated", src[: rng.randint(1, int(len(src) * 0.9))], "image/jpeg", e400)
    for _ in range(40):
        flipped = bytearray(valid_png)
        for _ in range(rng.randint(1, 20)):
            flipped[rng.randrange(8, len(flipped))] = rng.randrange(256)
        add("bit flips", bytes(flipped), "image/png", ok | e400 | e413)  # may still decode
    for w, h in [
        (50_000, 50_000),
        (2**31 - 1, 1),
        (1, 2**31 - 1),
        (65_535, 65_535),
        (6000, 6000),
    ] * 4:
        add("huge declared size", png_declaring(w, h), "image/png", e413)
    big_jpeg = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = big_jpeg.index(b"\xff\xc0")
    big_jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 65_000, 65_000)
    for _ in range(5):
        add("huge declared size", bytes(big_jpeg), "image/jpeg", e413)
    for fmt in ["GIF", "TIFF", "PDF", "ICO", "TGA", "PPM"] * 4:
        img = photo(32, 32).convert("P") if fmt == "GIF" else photo(32, 32)
        expected = e415 if fmt in ("GIF", "TIFF", "PDF", "ICO") else e400  # no magic: undecodable
        add(f"{fmt} labelled as JPEG", encode(img, fmt), "image/jpeg", expected)
    gray16 = Image.fromarray(nprng.integers(0, 65536, (20, 20)).astype(np.uint16))
    pal = photo().convert("P")
    rotated = photo()
    exif = rotated.getexif()
    exif[0x0112] = 8
    la = photo().convert("LA")
    valid_odd = [
        ("CMYK JPEG", encode(photo().convert("CMYK"), "JPEG"), "image/jpeg"),
        ("16-bit PNG", encode(gray16, "PNG"), "image/png"),
        ("palette + alpha", encode(pal, "PNG", transparency=5), "image/png"),
        ("EXIF rotation", encode(rotated, "JPEG", exif=exif.tobytes()), "image/jpeg"),
        ("1x10000", encode(Image.new("RGB", (1, 10_000), (200, 10, 10)), "PNG"), "image/png"),
        ("10000x1", encode(Image.new("L", (10_000, 1), 77), "PNG"), "image/png"),
        ("LA PNG", encode(la, "PNG"), "image/png"),
        ("WebP", encode(photo(), "WEBP"), "image/webp"),
        ("BMP", encode(photo(), "BMP"), "image/bmp"),
        ("1-bit PNG", encode(photo().convert("1"), "PNG"), "image/png"),
        ("JPEG labelled PNG", valid_jpeg, "image/png"),
        ("x-image", valid_png, "application/x-image"),
    ]
    for _ in range(3):
        for kind, body, ctype in valid_odd:
            add(kind, body, ctype, ok)
    for ctype in [
        None,
        "",
        "text/plain",
        "image/gif",
        "application/octet-stream",
        "multipart/form-data",
        "image/png;;;",
        "IMAGE/PNG",
    ] * 3:
        expected = ok if ctype in ("image/png;;;", "IMAGE/PNG") else e415
        add("content type", valid_png, ctype, expected)
    for accept in ["text/csv", "application/xml", "image/png", "application/json;q=0"] * 3:
        add("accept", valid_png, "image/png", frozenset({406}), Accept=accept)
    for ctype in ["image/png", "image/jpeg", "application/json", "application/x-npy"] * 3:
        add("empty body", b"", ctype, e400)
    for _ in range(20):
        junk = "".join(rng.choice("!@#$%^&*()abc=\n ") for _ in range(rng.randint(1, 50)))
        add("bad base64", json.dumps({"b64": junk}).encode(), "application/json", bad)
        add(
            "bad base64",
            json.dumps({"instances": [{"b64": junk}]}).encode(),
            "application/json",
            bad,
        )
    wrong_json = [
        b"{", b"[", b"null", b"1", b'"x"', b"{}", b'{"instances": null}', b'{"instances": {}}',
        b'{"instances": []}', b'{"inputs": [[1]]}', b"[[[1, 2], [3]]]", b"[[[true]]]", b"[[[null]]]",
        b'[[["1"]]]', b"[[[NaN]]]", b"[[[Infinity]]]", b"[[[-Infinity]]]", b"[[[1e999]]]",
        b'{"b64": 5}', b'{"b64": "", "x": 1}', b"\xff\xfe", b"[" * 50_000, b'{"a":' * 50_000,
        json.dumps([[[300]] * 8] * 8).encode(), json.dumps([[[-1]] * 8] * 8).encode(),
        json.dumps(np.zeros((8, 8, 3)).tolist()).encode(), json.dumps(np.zeros((8, 8)).tolist()).encode(),
        json.dumps({"instances": [np.zeros((8, 8, 1)).tolist(), np.zeros((7, 8, 1)).tolist()]}).encode(),
    ]  # fmt: skip
    for _ in range(2):
        for body in wrong_json:
            add("wrong JSON", body, "application/json", bad)
    for _ in range(20):
        shape = tuple(rng.randint(0, 9) for _ in range(rng.randint(0, 5)))
        if shape in ((8, 8, 1),) or (len(shape) == 4 and shape[1:] == (8, 8, 1) and shape[0] > 0):
            continue
        add("wrong npy shape", npy(np.zeros(shape, np.uint8)), "application/x-npy", bad)
    for value in [np.nan, np.inf, -np.inf]:
        for dtype in (np.float32, np.float64, np.float16):
            add(
                "non-finite npy", npy(np.full((1, 8, 8, 1), value, dtype)), "application/x-npy", bad
            )
    for arr in [
        np.zeros((1, 8, 8, 1), bool),
        np.zeros((1, 8, 8, 1), complex),
        np.array(["x"] * 64).reshape(1, 8, 8, 1),
    ]:
        add("wrong npy dtype", npy(arr), "application/x-npy", bad)
    evil = np.array([{"boom": 1}], dtype=object)
    for _ in range(3):
        add("pickled npy", npy(evil, allow_pickle=True), "application/x-npy", bad)
        add("raw pickle", pickle.dumps(evil), "application/x-npy", bad)
        add(
            "npz",
            npy(np.zeros((1, 8, 8, 1), np.uint8))[:6] + b"PK\x03\x04",
            "application/x-npy",
            bad,
        )
    for _ in range(3):
        add("batch 0", npy(np.zeros((0, 8, 8, 1), np.uint8)), "application/x-npy", bad)
        add("batch over max", npy(np.zeros((33, 8, 8, 1), np.uint8)), "application/x-npy", e413)
        add(
            "batch over max",
            json.dumps({"instances": [np.zeros((8, 8, 1), int).tolist()] * 33}).encode(),
            "application/json",
            e413,
        )
    for size in [MAX_BODY + 1, MAX_BODY * 2, 2**40]:
        head = f"POST /invocations HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: {size}\r\n\r\n"
        cases.append(Case("oversized", head.encode(), e413))
    cases.append(Case("oversized", request("POST", "/invocations", b"\0" * (MAX_BODY + 1)), e413))
    protocol = [
        (b"GARBAGE\r\n\r\n", bad), (b"GET\r\n\r\n", bad), (b"GET / HTTP/9.9\r\n\r\n", frozenset({505})),
        (b"POST /invocations HTTP/1.1\r\nContent-Length: -5\r\n\r\n", bad),
        (b"POST /invocations HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", bad),
        (b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", bad),
        (b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", bad),
        (b"GET /ping HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", frozenset({431})),
        (b"GET /ping HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", frozenset({431})),
        (b"GET /ping HTTP/1.1\r\n bad folded\r\n\r\n", bad),
        (b"DELETE /invocations HTTP/1.1\r\nConnection: close\r\n\r\n", frozenset({405})),
        (b"GET /../../etc/passwd HTTP/1.1\r\nConnection: close\r\n\r\n", frozenset({404})),
    ]  # fmt: skip
    for _ in range(2):
        for data, expected in protocol:
            cases.append(Case("protocol", data, expected))
    slow = [
        b"POST /invocations HTTP/1.1\r\nHost: x\r\n",
        b"POST /invocations HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
        + valid_png[:10],
    ]
    for data in slow * 4:
        cases.append(Case("slow client", data, frozenset({408}), wait_s=5))
    for _ in range(10):
        add(
            "explain on garbage",
            rng.randbytes(100),
            "image/png",
            e400,
            path="/invocations?explain=true",
        )
        add(
            "bad top_k",
            valid_png,
            "image/png",
            bad,
            path=f"/invocations?top_k={rng.choice(['0', '-1', '11', 'x', '1e3'])}",
        )
    rng.shuffle(cases)
    return cases


def test_fuzz(server_port: tuple[int, psutil.Process]) -> None:
    port, proc = server_port
    reference = request(
        "POST", "/invocations", encode(Image.new("L", (8, 8), 128), "PNG"), "image/png"
    )
    before_answer = send(port, reference).split(b"\r\n\r\n", 1)[1]
    send(
        port,
        request("POST", "/invocations?explain=true", encode(Image.new("L", (8, 8), 128), "PNG")),
    )
    rss_before = proc.memory_info().rss

    cases = build_cases(random.Random(SEED), np.random.default_rng(SEED))
    assert len(cases) >= 500

    def run(case: Case) -> tuple[Case, int, bytes]:
        answer = send(port, case.raw, case.wait_s)
        return case, _status(answer), answer

    failures = []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, cases))
    for case, status, answer in results:
        if status not in case.expected:
            failures.append(
                f"{case.kind}: got {status}, want {sorted(case.expected)}: {answer[:300]!r}"
            )
        elif status >= 400:
            body = answer.split(b"\r\n\r\n", 1)[1]
            if not json.loads(body).get("error"):
                failures.append(f"{case.kind}: {status} without a JSON error: {body[:200]!r}")
    assert not failures, "\n".join(failures[:30]) + f"\n({len(failures)} failures of {len(cases)})"
    assert {s for _, s, _ in results} <= {200, 400, 405, 406, 404, 408, 413, 415, 431, 505}

    assert proc.is_running()
    assert _status(send(port, request("GET", "/ping", b"", None))) == 200
    assert send(port, reference).split(b"\r\n\r\n", 1)[1] == before_answer
    growth_mb = (proc.memory_info().rss - rss_before) / 2**20
    assert growth_mb < 300, f"RSS grew by {growth_mb:.0f} MiB"
    metrics = send(port, request("GET", "/metrics", b"", None)).decode()
    assert (
        'lepton_errors_total{status="400"}' in metrics
        and 'lepton_errors_total{status="413"}' in metrics
    )


def test_rss_bounded_under_repeated_large_payloads(server_port: tuple[int, psutil.Process]) -> None:
    """Many maximum-size bodies and pixel-limit images in parallel: memory stays bounded."""
    port, proc = server_port
    nprng = np.random.default_rng(SEED)
    noisy = encode(Image.fromarray(nprng.integers(0, 256, (1400, 1400, 3), dtype=np.uint8)), "PNG")
    assert len(noisy) <= MAX_BODY
    big_json = json.dumps({"instances": [np.full((8, 8, 1), 255).tolist()]}).encode()
    big_json += b" " * (MAX_BODY - len(big_json))
    bodies: list[tuple[bytes, str]] = [(noisy, "image/png"), (big_json, "application/json")]
    rss_before = proc.memory_info().rss
    peak = rss_before

    def one(i: int) -> int:
        body, ctype = bodies[i % 2]
        return _status(send(port, request("POST", "/invocations", body, ctype), 60))

    stop = False

    def watch() -> None:
        nonlocal peak
        while not stop:
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.05)

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        watcher = pool.submit(watch)
        statuses = list(pool.map(one, range(24)))
        stop = True
        watcher.result()
    assert statuses == [200] * 24
    assert (peak - rss_before) / 2**20 < 600, f"peak RSS {peak / 2**20:.0f} MiB"


# --------------------------------------------------------------------------------------------
# Endpoint defects of issue 13, one class per test: each failed against the hand-written server.


def _start_server(
    model_dir: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "inference.server", "--model", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**(env if env is not None else os.environ), "PYTHONPATH": str(REPO_ROOT)},
    )
    deadline = time.monotonic() + 60
    while _status(send(port, request("GET", "/ping", b"", None), 2)) != 200:
        assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
    return proc, port


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


def _error_of(answer: bytes) -> dict:
    doc = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert doc.get("error"), answer[:300]
    return doc


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


@pytest.fixture()
def own_predictor(trained_model_dir: Path) -> Predictor:
    """A predictor of its own, free to be patched by the test."""
    return Predictor.load(trained_model_dir, threads=1)


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


def _metric(port: int, name: str) -> float:
    text = send(port, request("GET", "/metrics", b"", None)).split(b"\r\n\r\n", 1)[1].decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


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


def test_non_ascii_digits_are_refused(server_port: tuple[int, psutil.Process]) -> None:
    """``"²".isdigit()`` is true: such digits reached int() (top_k: a 500)."""
    port, _ = server_port
    img = encode(Image.new("L", (8, 8), 128), "PNG")
    for length in ("²".encode("latin-1"), "١٢".encode(), b"1\xc2\xb2"):
        head = b"POST /invocations HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: "
        answer = send(port, head + length + b"\r\nConnection: close\r\n\r\n" + img)
        assert _status(answer) == 400, answer[:200]
        _error_of(answer)
    raw_path = request("POST", "/invocations?top_k=\xb2", img)  # latin-1 "²" in the URL
    answer = send(port, raw_path)
    assert _status(answer) == 400, answer[:200]
    _error_of(answer)
    attributes = "X-Amzn-SageMaker-Custom-Attributes"
    for path, header in (
        ("/invocations?top_k=%C2%B2", None),
        ("/invocations?top_k=" + "9" * 5000, None),
        ("/invocations", "top_k=²".encode("latin-1")),
        ("/invocations", "top_k=١".encode()),
    ):
        data = request("POST", path, img)
        if header is not None:
            data = data.replace(
                b"\r\n\r\n", b"\r\n" + attributes.encode() + b": " + header + b"\r\n\r\n", 1
            )
        answer = send(port, data)
        assert _status(answer) == 400 and "top_k" in _error_of(answer)["error"], answer[:200]


def test_server_keeps_no_aws_secrets_and_rotates_its_log(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    secrets = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY000000",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value-never-to-be-kept",
        "AWS_SESSION_TOKEN": "session-token-value",
    }
    log = tmp_path / "logs" / "endpoint.log"
    proc, port = _start_server(
        trained_model_dir,
        *("--log-file", str(log), "--log-max-bytes", "3000", "--log-backups", "2"),
        env={**os.environ, **secrets},
    )
    try:
        environ = psutil.Process(proc.pid).environ()  # what the process was (re)started with
        assert not [k for k in environ if k.startswith("AWS_")]
        img = encode(Image.new("L", (8, 8), 128), "PNG")
        for _ in range(80):
            assert _status(send(port, request("POST", "/invocations", img))) == 200
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["endpoint.log", "endpoint.log.1", "endpoint.log.2"], files
    text = "".join((log.parent / f).read_text() for f in files)
    assert '"POST /invocations" 200' in text and "stopped" in text
    assert all((log.parent / f).stat().st_size <= 3000 for f in files)
    assert not any(value in text for value in secrets.values())


def test_remote_bind_needs_a_flag_and_a_bearer_token(
    trained_model_dir: Path, own_predictor: Predictor
) -> None:
    base = [sys.executable, "-m", "inference.server", "--model", str(trained_model_dir)]
    env = {k: v for k, v in os.environ.items() if k != "LEPTON_ENDPOINT_TOKEN"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    for extra, token, why in (
        ([], None, "--allow-remote"),
        (["--allow-remote"], None, "LEPTON_ENDPOINT_TOKEN"),
        (["--allow-remote"], "short", "LEPTON_ENDPOINT_TOKEN"),
    ):
        run_env = env if token is None else {**env, "LEPTON_ENDPOINT_TOKEN": token}
        out = subprocess.run(
            [*base, "--host", "0.0.0.0", "--port", "0", *extra],
            cwd=REPO_ROOT,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2 and why in out.stderr, out.stderr[-500:]

    token = "t0ken-of-enough-length"
    config = ServerConfig(
        host="0.0.0.0", port=0, allow_remote=True, auth_token=token, access_log=False
    )
    img = encode(Image.new("L", (8, 8), 128), "PNG")
    with serve_in_thread(own_predictor, config) as handle:
        port = handle.port
        assert _status(send(port, request("GET", "/ping", b"", None))) == 200  # health: open
        for path, body, ctype in (
            ("/invocations", img, "image/png"),
            ("/metrics", b"", None),
            ("/execution-parameters", b"", None),
        ):
            method = "POST" if body else "GET"
            for auth in (
                {},
                {"Authorization": "Bearer wrong-token-of-same-size"},
                {"Authorization": token},
            ):
                answer = send(port, request(method, path, body, ctype, **auth))
                assert _status(answer) == 401 and b"www-authenticate: bearer" in answer.lower()
            ok = send(port, request(method, path, body, ctype, Authorization=f"Bearer {token}"))
            assert _status(ok) == 200, ok[:200]
