"""bench/serve.py's load generator and server processes: a closed-loop HTTP/1.1 client on
asyncio (keep-alive connections, raw requests, so the client costs the same for every server)
and servers run as process groups that are waited for and stopped whole."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


@contextlib.contextmanager
def process(
    cmd: list[str], ping: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
    )
    try:
        try:
            wait_ready(ping, 180, proc)
        except (RuntimeError, TimeoutError):
            if log:
                out.flush()  # type: ignore[union-attr]
                sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise
        yield proc
    finally:
        stop_group(proc)
        if log:
            out.close()  # type: ignore[union-attr]


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM the child's own process group (it was started in a new session), so that the
    worker processes a server spawned (LitServe, mlflow's uvicorn) stop with it; SIGKILL what
    is left after ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout_s)
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # members of the group still alive?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def http_request(port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _client(
    port: int,
    request: bytes,
    stop_at: float,
    record_from: float,
    lat: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            t1 = time.perf_counter()
            if t0 >= record_from:
                lat.append(t1 - t0)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


def load(
    port: int,
    request: bytes,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    cpu_pid: int | None = None,
) -> dict[str, float]:
    """Closed loop at ``concurrency``; with ``cpu_pid``, also that process's CPU seconds over
    the measured window."""
    cpu: list[float] = []

    async def run() -> tuple[list[float], list[int]]:
        lat: list[float] = []
        errors: list[int] = []
        start = time.perf_counter()
        if cpu_pid is not None:
            loop = asyncio.get_running_loop()
            loop.call_later(warmup_s, lambda: cpu.append(cpu_seconds(cpu_pid)))
            loop.call_later(warmup_s + duration_s, lambda: cpu.append(cpu_seconds(cpu_pid)))
        await asyncio.gather(
            *(
                _client(port, request, start + warmup_s + duration_s, start + warmup_s, lat, errors)
                for _ in range(concurrency)
            )
        )
        return lat, errors

    lat, errors = asyncio.run(run())
    ms = np.asarray(lat) * 1000
    out = {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": len(errors),
        "throughput_rps": round(len(lat) / duration_s, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else float("nan"),
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else float("nan"),
    }
    if len(cpu) == 2:
        out["server_cpu_s"] = round(cpu[1] - cpu[0], 2)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)
