"""The inference server over real HTTP (ephemeral port), on the model training produces."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference import handler
from inference.predictor import Predictor
from inference.server import InferenceServer, ServerConfig, ServerHandle, serve_in_thread

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_BODY = 6_291_456


@pytest.fixture(scope="module")
def predictor(trained_model_dir: Path) -> Predictor:
    return Predictor.load(trained_model_dir, threads=1)


@pytest.fixture(scope="module")
def server(predictor: Predictor) -> Iterator[ServerHandle]:
    config = ServerConfig(port=0, header_timeout_s=1.0, body_timeout_s=1.5, max_wait_ms=2.0)
    with serve_in_thread(predictor, config) as handle:
        yield handle


def post(
    port: int,
    body: bytes,
    content_type: str | None = "image/png",
    path: str = "/invocations",
    **headers: str,
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    all_headers = {k.replace("_", "-"): v for k, v in headers.items()}
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    conn.request("POST", path, body=body, headers=all_headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else {}


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def raw(port: int, data: bytes, wait_s: float = 5.0) -> bytes:
    """Send raw bytes, return whatever the server answers before closing (or ``wait_s``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def digit_images(tiny_dataset_dir: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    from training.shards import load_split

    images, labels = load_split(tiny_dataset_dir, "test")
    return images[:n], labels[:n]


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, "PNG")
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_ping_and_contract(
    server: ServerHandle, predictor: Predictor, tiny_dataset_dir: Path
) -> None:
    assert get(server.port, "/ping")[0] == 200
    images, _ = digit_images(tiny_dataset_dir, 3)
    expected = predictor.top_k_labels(predictor.predict_arrays(images))
    status, doc = post(server.port, png(images[0]), "image/png", Accept="application/json")
    assert status == 200
    assert [(e["label"], e["score"]) for e in doc["predictions"][0]["top_k"]] == expected[0]
    assert doc["predictions"][0]["label"] == expected[0][0][0]
    status, doc = post(server.port, npy(images), "application/x-npy")
    assert status == 200 and len(doc["predictions"]) == 3
    assert [p["label"] for p in doc["predictions"]] == [e[0][0] for e in expected]
    body = json.dumps(
        {"instances": [{"b64": base64.b64encode(png(images[0])).decode()}, images[1].tolist()]}
    )
    status, doc = post(server.port, body.encode(), "application/json")
    assert status == 200 and [p["label"] for p in doc["predictions"]] == [
        e[0][0] for e in expected[:2]
    ]
    status, doc = post(server.port, png(images[0]), "image/png", path="/invocations?top_k=2")
    assert status == 200 and len(doc["predictions"][0]["top_k"]) == 2


def test_explain(server: ServerHandle, tiny_dataset_dir: Path) -> None:
    images, _ = digit_images(tiny_dataset_dir, 1)
    for path, headers in (
        ("/invocations?explain=true", {}),
        ("/invocations", {"X_Amzn_SageMaker_Custom_Attributes": "explain=true"}),
    ):
        status, doc = post(server.port, png(images[0]), "image/png", path=path, **headers)
        assert status == 200
        saliency = Image.open(
            io.BytesIO(base64.b64decode(doc["predictions"][0]["saliency_png_b64"]))
        )
        assert saliency.format == "PNG" and saliency.size == (8, 8)
    status, _ = post(server.port, png(images[0]), "image/png", path="/invocations?explain=maybe")
    assert status == 400


def test_payload_limit_boundary(
    server: ServerHandle, predictor: Predictor, tiny_dataset_dir: Path
) -> None:
    images, _ = digit_images(tiny_dataset_dir, 1)
    body = json.dumps(images[0].tolist()).encode()
    padded = body + b" " * (MAX_BODY - len(body))  # exactly the limit: accepted
    assert len(padded) == MAX_BODY
    status, doc = post(server.port, padded, "application/json")
    assert status == 200
    assert (
        doc["predictions"][0]["label"]
        == predictor.top_k_labels(predictor.predict_arrays(images))[0][0][0]
    )
    # One byte more: refused from Content-Length alone, before any body byte is sent.
    head = f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
    answer = raw(server.port, head.encode())
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"error"' in answer
    # http.client sending the whole oversized body still reads the 413.
    status, doc = post(server.port, b"\0" * (MAX_BODY + 1), "image/png")
    assert status == 413 and "limit" in doc["error"]


def test_protocol_details(server: ServerHandle, tiny_dataset_dir: Path) -> None:
    images, _ = digit_images(tiny_dataset_dir, 1)
    body = png(images[0])
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 50]), body[i : i + 50]) for i in range(0, len(body), 50)
    )
    answer = raw(
        server.port,
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunked + b"0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    answer = raw(
        server.port,
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    )
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    # Keep-alive: three requests on one connection.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(3):
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/png"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Connection") == "keep-alive"
        resp.read()
    conn.close()
    assert get(server.port, "/nope")[0] == 404
    assert get(server.port, "/invocations")[0] == 405
    assert post(server.port, b"", None, path="/ping")[0] == 405
    status, data = get(server.port, "/execution-parameters")
    assert status == 200 and json.loads(data)["MaxPayloadInMB"] == 6


def test_slow_clients_time_out_without_blocking_others(
    server: ServerHandle, tiny_dataset_dir: Path
) -> None:
    images, _ = digit_images(tiny_dataset_dir, 1)
    body = png(images[0])
    slow_head = b"POST /invocations HTTP/1.1\r\nHost: x\r\n"  # never finishes its headers
    slow_body = (
        b"POST /invocations HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body[:10]
    )
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        slow = [pool.submit(raw, server.port, slow_head) for _ in range(3)]
        slow += [pool.submit(raw, server.port, slow_body) for _ in range(3)]
        time.sleep(0.2)
        started = time.monotonic()
        for _ in range(10):  # served promptly while the slow clients hold connections
            assert post(server.port, body)[0] == 200
        assert time.monotonic() - started < 2.0
        answers = [f.result(timeout=10) for f in slow]
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers


def test_metrics(server: ServerHandle) -> None:
    post(server.port, b"garbage", "image/png")
    status, data = get(server.port, "/metrics")
    text = data.decode()
    assert status == 200
    for needle in (
        "# TYPE lepton_invocation_latency_seconds histogram",
        'lepton_invocation_latency_seconds_bucket{le="+Inf"}',
        "# TYPE lepton_batch_size histogram",
        'lepton_errors_total{status="400"}',
        'lepton_responses_total{path="/invocations",status="200"}',
        "lepton_model_loaded 1",
    ):
        assert needle in text


def test_concurrent_clients_match_single_requests(
    server: ServerHandle, tiny_dataset_dir: Path
) -> None:
    images, _ = digit_images(tiny_dataset_dir, 64)
    bodies = [(png(img), "image/png") for img in images[:32]] + [
        (npy(img[None]), "application/x-npy") for img in images[32:]
    ]
    single = [post(server.port, b, t) for b, t in bodies]
    assert all(s == 200 for s, _ in single)

    def client(i: int) -> list[tuple[int, dict]]:
        order = [(i + j) % len(bodies) for j in range(len(bodies))]  # every client, every body
        return [(k, post(server.port, *bodies[k])) for k in order]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(client, range(32)))
    for per_client in results:
        for k, (status, doc) in per_client:
            assert status == 200
            want = single[k][1]["predictions"][0]
            got = doc["predictions"][0]
            assert [e["label"] for e in got["top_k"]] == [e["label"] for e in want["top_k"]]
            np.testing.assert_allclose(
                [e["score"] for e in got["top_k"]],
                [e["score"] for e in want["top_k"]],
                rtol=1e-5,
                atol=1e-6,
            )
    _, data = get(server.port, "/metrics")
    sizes = [
        line for line in data.decode().splitlines() if line.startswith("lepton_batch_size_count")
    ]
    assert sizes  # batched (count < requests) is likely but not asserted: it depends on timing


def test_handler_shims_match_server(
    server: ServerHandle, trained_model_dir: Path, tiny_dataset_dir: Path
) -> None:
    images, _ = digit_images(tiny_dataset_dir, 4)
    model = handler.model_fn(str(trained_model_dir))
    bodies = [
        (png(images[0]), "image/png"),
        (npy(images), "application/x-npy"),
        (json.dumps({"instances": images[:2].tolist()}).encode(), "application/json"),
        (
            json.dumps({"b64": base64.b64encode(png(images[3])).decode()}).encode(),
            "application/json",
        ),
    ]
    for body, ctype in bodies:
        status, doc = post(server.port, body, ctype)
        assert status == 200
        answer = handler.output_fn(
            handler.predict_fn(handler.input_fn(body, ctype), model), "application/json"
        )
        assert json.loads(answer) == doc


def test_ping_503_until_loaded_and_graceful_stop(
    predictor: Predictor, tiny_dataset_dir: Path
) -> None:
    gate = threading.Event()

    def slow_load() -> Predictor:
        gate.wait(10)
        return predictor

    server = InferenceServer(ServerConfig(port=0, grace_s=10), load=slow_load)
    handle = ServerHandle(server)
    thread = threading.Thread(target=handle.start, kwargs={"timeout_s": 30})
    thread.start()
    deadline = time.monotonic() + 10
    while server.port is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert get(server.port, "/ping")[0] == 503
    assert post(server.port, png(digit_images(tiny_dataset_dir, 1)[0][0]))[0] == 503
    gate.set()
    thread.join(30)
    assert get(handle.port, "/ping")[0] == 200

    # A request in flight when stop() is called still gets its answer.
    original = predictor._run_logits
    slow = threading.Event()

    def slow_run(pixels: np.ndarray) -> np.ndarray:
        slow.set()
        time.sleep(1.0)
        return original(pixels)

    images, _ = digit_images(tiny_dataset_dir, 1)
    predictor._run_logits = slow_run
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, handle.port, png(images[0]))
            assert slow.wait(10)
            handle.stop(20)
            status, doc = pending.result(10)
    finally:
        predictor._run_logits = original
    assert status == 200 and doc["predictions"]
    with pytest.raises(OSError):
        get(handle.port, "/ping")


def test_cli_sigterm_and_access_log(trained_model_dir: Path, tiny_dataset_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "inference.server",
        "--model",
        str(trained_model_dir),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(port, "/ping")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.1)
        images, _ = digit_images(tiny_dataset_dir, 1)
        body = json.dumps({"b64": base64.b64encode(png(images[0])).decode()}).encode()
        assert post(port, body, "application/json")[0] == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    log = out.decode()
    assert '"POST /invocations" 200' in log and "stopped" in log
    assert base64.b64encode(png(images[0])).decode()[:40] not in log  # no payloads in logs


def test_body_budget_bounds_memory_held_for_uploads(predictor: Predictor) -> None:
    config = ServerConfig(port=0, max_inflight_body_bytes=1000, body_timeout_s=5.0)
    with (
        serve_in_thread(predictor, config) as handle,
        socket.create_connection(("127.0.0.1", handle.port), timeout=10) as holder,
    ):
        # A slow upload holds 900 bytes of the 1000-byte budget...
        holder.sendall(
            b"POST /invocations HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 900\r\n\r\n"
        )
        time.sleep(0.2)
        # ...so a second upload that would exceed it is refused before its body is read.
        status, doc = post(handle.port, b"\0" * 200, "image/png")
        assert status == 503 and "retry" in doc["error"]
        holder.sendall(b"\0" * 900)
        assert holder.recv(65536).startswith(b"HTTP/1.1 400 ")  # garbage image, budget released
        assert post(handle.port, b"\0" * 200, "image/png")[0] == 400


def test_requests_in_progress_counts_dispatched_requests_only(server: ServerHandle) -> None:
    """What lets a lone request run the model on the loop (batcher): heads received, not
    answered. Silent connections and finished requests do not count."""

    def count_becomes(n: int) -> bool:
        deadline = time.monotonic() + 5
        while server.server.requests_in_progress() != n and time.monotonic() < deadline:
            time.sleep(0.01)
        return server.server.requests_in_progress() == n

    head = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    silent = socket.create_connection(("127.0.0.1", server.port))
    waiting = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    for sock in waiting:
        sock.sendall(head)  # the head only: the body never comes
    assert count_becomes(3)
    assert post(server.port, b"", content_type="application/json")[0] == 400
    assert count_becomes(3)  # a finished request leaves the count as it was
    for sock in [silent, *waiting]:
        sock.close()
    assert count_becomes(0)
