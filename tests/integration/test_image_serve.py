"""The image's `serve` command (infra/image/serve), run as SageMaker hosting runs it, minus Docker:
from a model folder laid out like an extracted model.tar.gz (model files + code/inference/), with
no project code on the path but the artifact's own, on the port SageMaker asks for."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from inference.testing import write_tiny_model
from pipelines.imports import SOURCE_ROOT, import_closure
from tests.fixtures_services import free_port_block

SERVE = SOURCE_ROOT / "infra" / "image" / "serve"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment a container has: no PYTHONPATH into this checkout, `python` on PATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path)
    env.update(extra)
    return env


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_ping(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}")
        try:
            if _get(port, "/ping")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not answer /ping")


def test_the_serving_code_is_self_contained() -> None:
    """What training puts under code/inference/ is all the server imports of the project."""
    closure = import_closure("inference.server")
    assert all(p.relative_to(SOURCE_ROOT).parts[0] == "inference" for p in closure), closure


def test_serve_runs_the_artifacts_own_server(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "opt-ml-model")
    code = model / "code" / "inference"
    shutil.copytree(SOURCE_ROOT / "inference", code, ignore=shutil.ignore_patterns("__pycache__"))
    marker = tmp_path / "served-from.txt"
    with (code / "__init__.py").open("a") as init:  # instrument the copy: which code runs?
        init.write(
            "\nimport os as _os\nopen(_os.environ['LEPTON_TEST_MARKER'], 'w').write(__file__)\n"
        )
    port = free_port_block(1)
    env = _env(
        tmp_path,
        LEPTON_MODEL_DIR=str(model),
        SAGEMAKER_BIND_TO_PORT=str(port),
        LEPTON_TEST_MARKER=str(marker),
    )
    proc = subprocess.Popen(
        ["sh", str(SERVE), "--workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ping(port, proc)
        assert Path(marker.read_text()).resolve() == (code / "__init__.py").resolve()
        # exec: the shell is gone, the server itself gets SageMaker's signals
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert Path(cmdline[0].decode()).name.startswith("python"), cmdline
        assert b"inference.server" in cmdline and b"0.0.0.0" in cmdline

        png = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 30, 30)).save(png, format="PNG")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST", "/invocations", body=png.getvalue(), headers={"Content-Type": "image/png"}
        )
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        conn.close()
        assert resp.status == 200, answer
        (prediction,) = answer["predictions"]
        assert prediction["label"] in {"circle", "square", "triangle", "cross"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output = proc.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, output[-3000:]


def test_serve_refuses_a_model_without_code(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model")
    proc = subprocess.run(
        ["sh", str(SERVE)],
        cwd=tmp_path,
        env=_env(tmp_path, LEPTON_MODEL_DIR=str(model)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "code/inference/server.py is missing" in proc.stderr
