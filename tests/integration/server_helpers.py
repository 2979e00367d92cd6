"""Raw-socket helpers for the endpoint hardening tests (test_server_*.py): build a request byte
for byte, send it, read the status, error and metrics back, and start ``inference.server`` as a
process of its own (so a crash cannot hide and its RSS is measurable)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from tests.fixtures_data import png_declaring as declaring

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_BODY = 6_291_456


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


def png_declaring(width: int, height: int) -> bytes:
    """tests/fixtures_data.py's, with 64 KiB of (compressed) zero pixel bytes behind it."""
    return declaring(width, height, idat_zeros=65536)


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


def _error_of(answer: bytes) -> dict:
    doc = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert doc.get("error"), answer[:300]
    return doc


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
