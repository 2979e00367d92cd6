"""Two-process DDP on CPU (gloo) under torchrun: synchronisation, kill -9 and resume."""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_model import REPO_ROOT, train_subprocess_env
from training.checkpoints import list_checkpoints

pytestmark = pytest.mark.slow
TRAIN_IMAGES = 1437  # tiny_dataset_dir train split
CONFIG = [
    "--setup",
    "tiny",
    "--epochs",
    "4",
    "--per-device-batch-size",
    "16",
    "--process-group-timeout-s",
    "60",
]


def _torchrun(dataset: Path, root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "training.train",
        "--dataset",
        str(dataset),
        "--model-dir",
        str(root / "model"),
        "--output-data-dir",
        str(root / "out"),
        "--checkpoint-dir",
        str(root / "ckpt"),
        "--no-tracking",
        *CONFIG,
        *extra,
    ]


def _report(root: Path) -> dict:
    return json.loads((root / "out" / "training.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(
    tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("ddp_plain")
    proc = subprocess.run(
        _torchrun(tiny_dataset_dir, root, "--report-param-digest"),
        cwd=REPO_ROOT,
        env=train_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc.stdout


def test_two_processes_really_synchronise(uninterrupted: tuple[Path, str]) -> None:
    root, stdout = uninterrupted
    digests = dict(re.findall(r"param_digest rank=(\d) sha256=([0-9a-f]{64})", stdout))
    assert set(digests) == {"0", "1"}, stdout
    assert digests["0"] == digests["1"]  # every rank holds the same weights after training
    report = _report(root)
    assert report["world_size"] == 2
    assert report["global_batch_size"] == 2 * report["per_device_batch_size"] == 32
    # DistributedSampler: each rank gets ceil(N / 2) images, so one epoch is
    # ceil(ceil(N / 2) / per-device batch) optimiser steps of the global batch
    steps = math.ceil(math.ceil(TRAIN_IMAGES / 2) / 16)
    assert report["steps_per_epoch"] == steps and report["global_step"] == 4 * steps
    assert report["metrics"]["test_accuracy"] > 0.8


def _kill9_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun puts workers in new sessions)."""
    import psutil

    parent = psutil.Process(pid)
    for process in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)


def _killed_mid_run(dataset: Path, root: Path) -> str:
    """Start a run, SIGKILL its whole tree as soon as its first checkpoint lands; "" when the
    kill landed mid-run, else what went wrong (the tiny run can finish first on a busy box)."""
    proc = subprocess.Popen(
        _torchrun(dataset, root),
        cwd=REPO_ROOT,
        env=train_subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.monotonic()
    while not list_checkpoints(root / "ckpt") and time.monotonic() < t0 + 240:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.01)
    seen, seen_at = [p.name for p in list_checkpoints(root / "ckpt")], time.monotonic() - t0
    _kill9_tree(proc.pid)  # the machine goes away: agent and both ranks at once
    proc.wait(timeout=30)
    done = root / "out" / "training.json"
    if not done.exists():
        return ""
    return (
        f"run finished before the kill: checkpoints {seen} seen after {seen_at:.2f} s, "
        f"training.json {time.time() - done.stat().st_mtime:.2f} s old at the check, "
        f"then {[p.name for p in list_checkpoints(root / 'ckpt')]}"
    )


def test_kill9_mid_run_then_resume_matches(
    uninterrupted: tuple[Path, str], tiny_dataset_dir: Path, tmp_path: Path
) -> None:
    misses = []
    for attempt in range(3):  # the kill must land mid-run; a lost race is retried, not passed
        root = tmp_path / f"attempt-{attempt}"
        miss = _killed_mid_run(tiny_dataset_dir, root)
        if not miss:
            break
        misses.append(miss)
    else:
        raise AssertionError("; ".join(misses))
    last = list_checkpoints(root / "ckpt")[0]

    restarted = subprocess.run(
        _torchrun(tiny_dataset_dir, root),
        cwd=REPO_ROOT,
        env=train_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    report, expected = _report(root), _report(uninterrupted[0])
    assert report["resumed_from"] == str(last)
    assert report["global_step"] == expected["global_step"]
    for key in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
        assert report["metrics"][key] == pytest.approx(expected["metrics"][key], abs=1e-3), key


def _wait_for_checkpoint(proc: subprocess.Popen[bytes], ckpt_dir: Path) -> None:
    deadline = time.monotonic() + 240
    while not list_checkpoints(ckpt_dir) and time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.02)
    time.sleep(0.2)  # into the next epoch


def test_torchrun_restarts_all_ranks_after_one_is_killed(
    uninterrupted: tuple[Path, str], tiny_dataset_dir: Path, tmp_path: Path
) -> None:
    import psutil

    cmd = _torchrun(tiny_dataset_dir, tmp_path)
    cmd.insert(cmd.index("--nproc_per_node"), "--max-restarts=1")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=train_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _wait_for_checkpoint(proc, tmp_path / "ckpt")
    workers = [
        p for p in psutil.Process(proc.pid).children() if "training.train" in " ".join(p.cmdline())
    ]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGKILL)  # one rank dies; torchrun restarts both
    out = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    report, expected = _report(tmp_path), _report(uninterrupted[0])
    assert report["resumed_from"] is not None
    for key in ("test_accuracy", "test_loss"):
        assert report["metrics"][key] == pytest.approx(expected["metrics"][key], abs=1e-3), key


def test_sigterm_on_two_ranks_checkpoints_mid_epoch_then_resumes(
    uninterrupted: tuple[Path, str], tiny_dataset_dir: Path, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        _torchrun(tiny_dataset_dir, tmp_path),
        cwd=REPO_ROOT,
        env=train_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _wait_for_checkpoint(proc, tmp_path / "ckpt")
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert "SIGTERM: saved checkpoint" in out, out[-3000:]
    saved = list_checkpoints(tmp_path / "ckpt")[0]
    steps_per_epoch = _report(uninterrupted[0])["steps_per_epoch"]
    assert int(saved.stem.split("-")[1]) % steps_per_epoch != 0, "not a mid-epoch checkpoint"

    resumed = subprocess.run(
        _torchrun(tiny_dataset_dir, tmp_path),
        cwd=REPO_ROOT,
        env=train_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    report, expected = _report(tmp_path), _report(uninterrupted[0])
    assert report["resumed_from"] == str(saved)
    for key in ("test_accuracy", "test_loss", "val_accuracy"):
        assert report["metrics"][key] == pytest.approx(expected["metrics"][key], abs=1e-3), key
