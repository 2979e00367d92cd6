"""`lepton serve` and `lepton predict`, as a user runs them: two processes talking HTTP."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from tests.fixtures_services import free_port_block
from training.shards import load_split


def _wait_ping(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} never answered /ping")


def test_serve_a_model_folder_and_predict_files(
    trained_model_dir: Path, tiny_dataset_dir: Path, tmp_path: Path
) -> None:
    images, labels = load_split(tiny_dataset_dir, "test")
    files = []
    for i in range(6):
        path = tmp_path / f"digit-{i}.png"
        Image.fromarray(images[i][..., 0]).save(path)
        files.append(path)
    npy = tmp_path / "digit.npy"
    buf = io.BytesIO()
    np.save(buf, images[0], allow_pickle=False)
    npy.write_bytes(buf.getvalue())
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")

    port = free_port_block(1)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LEPTON_STATE_DIR": str(tmp_path / "state")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "serve",
            "--model",
            str(trained_model_dir),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ping(url)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "predict",
                *map(str, files),
                str(npy),
                "--endpoint",
                url,
                "--top-k",
                "2",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert len(lines) == len(files) + 1
        predicted = [line.split(": ", 1)[1].split()[0] for line in lines]
        truth = [str(int(labels[i])) for i in range(6)] + [str(int(labels[0]))]
        assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= 5, lines

        refused = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "predict", str(bogus), "--endpoint", url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1 and "unsupported file type" in refused.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
