"""A tracking server that goes away mid-run never hangs training (issue 13).

A real training job (`python -m training.train --setup tiny`, 12 epochs on the digits dataset)
tracks to a private MLflow server started through `pipelines.services`; the server's whole
process group is killed with SIGKILL after epoch 3. Restarted, it receives every buffered
metric and the job ends complete; never restarted, the job still ends (exit 0, model exported)
within its retry window and says in training.json what was not logged. An outage *before*
the job starts still fails it at once (tests/integration/test_training_run.py).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow import MlflowClient

from pipelines.services import control as services
from pipelines.services.process import running_pid
from pipelines.settings import Settings
from tests.fixtures_model import REPO_ROOT, train_subprocess_env
from tests.fixtures_services import make_settings

EPOCHS = 12
JOB_TIMEOUT_S = 600  # a bound on the whole job, far above its retry windows; not a timing claim


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A private SeaweedFS + MLflow stack these tests may kill."""
    settings = make_settings(tmp_path_factory.mktemp("outage-state"))
    services.up(settings, out=_quiet)
    yield settings
    services.down(settings, out=_quiet)


class Output:
    """The lines a subprocess prints, read on a thread so waiting for one has a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, matches: Callable[[str], bool], timeout_s: float = JOB_TIMEOUT_S) -> str:
        while True:
            try:
                line = self._queue.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError("no such line yet:\n" + self.text()[-3000:]) from None
            if line is None:
                raise AssertionError("the job ended first:\n" + self.text()[-3000:])
            self.lines.append(line)
            if matches(line):
                return line

    def rest(self) -> str:
        """Everything up to the end of the stream (call once the process has exited)."""
        while (line := self._queue.get(timeout=60)) is not None:
            self.lines.append(line)
        return self.text()

    def text(self) -> str:
        return "\n".join(self.lines)


def _start_job(
    settings: Settings, dataset: Path, work: Path, retry_window_s: int
) -> tuple[subprocess.Popen[str], Output]:
    env = train_subprocess_env(
        MLFLOW_TRACKING_URI=settings.tracking_uri,
        MLFLOW_EXPERIMENT_NAME="outage-tests",
        LEPTON_TRACKING_RETRY_S=str(retry_window_s),
    )
    cmd = [sys.executable, "-m", "training.train", "--setup", "tiny", "--epochs", str(EPOCHS)]
    for flag, folder in (
        ("--dataset", dataset),
        ("--model-dir", work / "model"),
        ("--output-data-dir", work / "output"),
        ("--checkpoint-dir", work / "ckpt"),
    ):
        cmd += [flag, str(folder)]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, Output(proc)


def _kill_mlflow(settings: Settings) -> None:
    """SIGKILL the MLflow server's whole process group (CLI, uvicorn): no clean shutdown."""
    pid = running_pid(settings, "mlflow", "mlflow")
    assert pid is not None, "the MLflow server is not running"
    group = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    os.killpg(pid, signal.SIGKILL)
    psutil.wait_procs(group, timeout=30)


def _finish(proc: subprocess.Popen[str], output: Output) -> str:
    try:
        proc.wait(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the job hung:\n" + output.text()[-3000:]) from None
    text = output.rest()
    assert proc.returncode == 0, text[-3000:]
    assert "training: done" in text, text[-3000:]
    return text


def _report(work: Path) -> dict[str, Any]:
    return json.loads((work / "output" / "training.json").read_text())


def _job_losing_its_server(
    settings: Settings, dataset: Path, work: Path, retry_window_s: int
) -> tuple[subprocess.Popen[str], Output]:
    """A 12-epoch job whose MLflow server is SIGKILLed once epoch 3 has ended."""
    services.up(settings, out=_quiet)  # (again: the previous test may have left it dead)
    proc, output = _start_job(settings, dataset, work, retry_window_s)
    output.wait_for(lambda line: line.startswith(f"epoch 3/{EPOCHS}"))
    _kill_mlflow(settings)
    return proc, output


@pytest.mark.slow
def test_metrics_buffered_during_an_outage_arrive_after_a_restart(
    settings: Settings, tiny_dataset_dir: Path, tmp_path: Path
) -> None:
    proc, output = _job_losing_its_server(settings, tiny_dataset_dir, tmp_path, 300)
    # the job noticed (while training, or at its end) and keeps going; only then restart
    output.wait_for(lambda line: "metrics are buffered" in line or "does not answer" in line)
    services.up(settings, out=_quiet)
    text = _finish(proc, output)

    assert "metrics are buffered" in text and "is back" in text, text[-3000:]
    report = _report(tmp_path)
    assert report["tracking"]["complete"] is True, report["tracking"]
    assert report["tracking"]["pending_batches"] == 0 and report["tracking"]["missing"] == []
    assert (tmp_path / "model" / "model.onnx").is_file()
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_acc", "lr"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(EPOCHS)), (key, steps)  # each epoch once, none lost
    assert run.data.metrics["final_test_accuracy"] == pytest.approx(
        report["metrics"]["test_accuracy"]
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metadata.json", "confusion_matrix_test.png"} <= artifacts
    assert run.outputs is not None and len(run.outputs.model_outputs) == 1  # the ONNX model


@pytest.mark.slow
def test_a_server_that_never_returns_ends_the_job_with_a_warning(
    settings: Settings, tiny_dataset_dir: Path, tmp_path: Path
) -> None:
    proc, output = _job_losing_its_server(settings, tiny_dataset_dir, tmp_path, 5)
    text = _finish(proc, output)

    assert "tracking incomplete" in text, text[-3000:]
    assert (tmp_path / "model" / "model.onnx").is_file()
    assert (tmp_path / "model" / "metadata.json").is_file()
    tracking = _report(tmp_path)["tracking"]
    assert tracking["enabled"] is True and tracking["complete"] is False, tracking
    assert tracking["pending_batches"] >= 1, tracking  # at least the final metrics
    assert {"model", "run status FINISHED"} <= set(tracking["missing"]), tracking

    # what the job could not send is honestly missing in MLflow: the run never ended
    services.up(settings, out=_quiet)
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(_report(tmp_path)["mlflow_run_id"])
    assert run.info.status == "RUNNING"
    logged = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert len(logged) < EPOCHS and "final_test_accuracy" not in run.data.metrics
