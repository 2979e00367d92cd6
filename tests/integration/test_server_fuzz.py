"""Fuzz the server process with >= 500 malformed (and some odd but valid) requests.

Every request has an asserted answer: a 4xx with a JSON ``error``, or 200 where the input is
really valid (CMYK, 16-bit, palette + alpha, EXIF-rotated, 1 x 10000 images are classified).
Also on the same server: repeated maximum-size bodies keep its RSS bounded, and non-ASCII digits
(in a Content-Length, ``top_k`` or custom attributes) are refused with a 400.
The server runs as its own process, so a crash cannot hide and its RSS is measurable.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import pickle
import random
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from tests.integration.server_helpers import (
    MAX_BODY,
    REPO_ROOT,
    _error_of,
    _status,
    encode,
    png_declaring,
    request,
    send,
)

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


def npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


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
