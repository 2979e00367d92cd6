"""The server process's environment and exposure: it keeps no AWS secrets in its environment
and rotates its log file; binding a non-loopback address needs ``--allow-remote`` and a
``LEPTON_ENDPOINT_TOKEN``, and then every route but ``/ping`` needs the bearer token.
Endpoint defects of issue 13, one class per test: each failed against the hand-written server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
from PIL import Image

from inference.predictor import Predictor
from inference.server import ServerConfig, serve_in_thread
from tests.integration.server_helpers import (
    REPO_ROOT,
    _start_server,
    _status,
    encode,
    request,
    send,
)


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
