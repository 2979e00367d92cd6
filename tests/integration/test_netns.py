"""The network-namespace launcher (pipelines/services/netns.py) on a real service.

The service here is a small echo server that listens on two ports inside the namespace: the
forwarded one must echo every byte back through the launcher, the other must be unreachable
from the host. Also: the launcher leaks no sockets, and it and its service stop together.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from pipelines.services import netns
from tests.fixtures_services import free_port_block

pytestmark = pytest.mark.skipif(
    not netns.available(), reason="this machine refuses unprivileged network namespaces"
)

# Echoes each connection's bytes until EOF, then closes; a second port answers "secret".
ECHO = """
import socket, sys, threading
port = int(sys.argv[1])
def echo(conn):
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)
def serve(port, handler):
    with socket.create_server(("127.0.0.1", port)) as srv:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()
def secret(conn):
    with conn:
        conn.sendall(b"secret")
threading.Thread(target=serve, args=(port + 1, secret), daemon=True).start()
print("ready", flush=True)
serve(port, echo)
"""


def _launch(port: int, *service: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "pipelines.services.netns", "--host", "127.0.0.1"]
    return subprocess.Popen(
        [*command, "--port", str(port), "--", *service],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture()
def launched() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port_block(2)
    proc = _launch(port, sys.executable, "-c", ECHO, str(port))
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # the echo ends when it has read everything

        # write while reading: a large payload fills both directions' buffers
        sender = threading.Thread(target=send)
        sender.start()
        chunks = []
        while data := sock.recv(1 << 16):
            chunks.append(data)
        sender.join()
        return b"".join(chunks)


def test_forwarded_port_carries_every_byte_both_ways(launched: tuple) -> None:
    _, port = launched
    payload = os.urandom(8 * 1024 * 1024 + 7)  # larger than any socket and pipe buffer
    assert _round_trip(port, payload) == payload
    assert _round_trip(port, b"") == b""  # an empty connection ends cleanly


def test_other_ports_of_the_service_are_unreachable(launched: tuple) -> None:
    _, port = launched
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port + 1), timeout=5)


def test_no_sockets_leak_across_many_connections(launched: tuple) -> None:
    proc, port = launched
    _round_trip(port, b"warm up")
    before = psutil.Process(proc.pid).num_fds()
    for i in range(300):
        assert _round_trip(port, f"request {i}".encode()) == f"request {i}".encode()
    for _ in range(50):  # the last connections' threads close their sockets just after
        if psutil.Process(proc.pid).num_fds() <= before:
            break
        time.sleep(0.1)
    assert psutil.Process(proc.pid).num_fds() <= before


def test_sigterm_stops_the_service_and_the_launcher(launched: tuple) -> None:
    proc, _ = launched
    children = psutil.Process(proc.pid).children()
    assert len(children) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM  # the service's end, passed on
    assert not psutil.pid_exists(children[0].pid) or children[0].status() == "zombie"
    assert proc.stderr is not None  # the log says who stopped it: this test's process
    me = f"pid {os.getpid()} ({psutil.Process().name()})"
    assert f"netns: SIGTERM from {me}: stopping" in proc.stderr.read().decode()


def test_service_dies_with_a_killed_launcher(launched: tuple) -> None:
    proc, _ = launched
    child = psutil.Process(proc.pid).children()[0]
    proc.kill()
    proc.wait()
    gone, _ = psutil.wait_procs([child], timeout=10)
    assert gone


def test_launcher_exits_with_the_services_code() -> None:
    port = free_port_block(1)
    proc = _launch(port, sys.executable, "-c", "raise SystemExit(7)")
    assert proc.wait(timeout=30) == 7
