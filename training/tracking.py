"""Experiment tracking with MLflow, used by global rank 0 only.

- :func:`start_tracking` checks the tracking server is reachable *before* any training (an
  unreachable server fails the job at once, not after hours), then creates the run or, when
  the job resumes, reopens the run whose id is stored in the checkpoint folder.
- Params are the full config; per-epoch metrics go in one ``log_batch`` per epoch, sent
  asynchronously so logging never waits on the network inside the training loop, and buffered
  while the server is away (:mod:`training.tracking_outbox`).
- A server that goes away *during* the job never hangs it: every MLflow request is bounded
  (retries and timeout: ``TrainEnv.mlflow_http_*``) and the job's closing calls share one
  retry window (``TrainEnv.tracking_retry_window_s``). If the server is still away then, the
  job finishes without it, says so, and :meth:`MlflowTracker.report` records what was not
  logged (training.json's ``tracking``).
- The run ends in a terminal state when the server can be reached: FINISHED, FAILED
  (exception) or KILLED (signal).
- Without a tracking URI a :class:`NullTracker` does nothing (one notice is printed).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from training.env import TRACKING_RETRY_WINDOW_S
from training.tracking_outbox import MetricOutbox, RetryWindow

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
ABORT_RETRY_WINDOW_S = 10.0  # the same for a failed or killed job (SIGTERM's grace is short)


def quiet_sagemaker_header_plugin() -> None:
    """Drop one warning per request from the sagemaker-mlflow plugin (a SageMaker dependency).

    Its request-header provider assumes the tracking URI is a SageMaker ARN and fails with
    "list index out of range" against any other server; MLflow logs that on every call.
    """
    logger = logging.getLogger("mlflow.tracking.request_header.registry")
    if _drop_plugin_warning not in logger.filters:
        logger.addFilter(_drop_plugin_warning)


def _drop_plugin_warning(record: logging.LogRecord) -> bool:
    return "list index out of range" not in record.getMessage()


def mlflow_client(uri: str) -> Any:
    """An MlflowClient for ``uri``. The sagemaker-mlflow plugin, which serves SageMaker managed
    MLflow ARNs, signs requests for the *process-wide* tracking URI, not the client's, so an
    ARN becomes that too (else every call fails with "list index out of range")."""
    import mlflow
    from mlflow import MlflowClient

    quiet_sagemaker_header_plugin()
    if uri.startswith("arn:"):
        mlflow.set_tracking_uri(uri)
    return MlflowClient(uri, registry_uri=uri)


SERVING_DISTRIBUTIONS = ("numpy", "onnx", "onnxruntime")  # what the onnx flavour imports


def serving_requirements() -> list[str]:
    """The logged model's pip requirements: what loading it as pyfunc imports, pinned to the
    versions this job ran (``mlflow`` itself MLflow adds)."""
    from importlib.metadata import version

    return [f"{dist}=={version(dist)}" for dist in SERVING_DISTRIBUTIONS]


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached or used; raised at job start."""


class NullTracker:
    """Tracking disabled: every call is a no-op."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None: ...
    def log_onnx_model(
        self,
        onnx_path: str | os.PathLike[str],
        input_example: np.ndarray,
        output_example: np.ndarray,
        step: int = 0,
    ) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...
    def report(self) -> dict[str, Any]:
        """What reached the tracking server (training.json's ``tracking``)."""
        return {"enabled": False, "complete": True, "pending_batches": 0, "missing": []}


def _http_failure(uri: str, timeout_s: float) -> str | None:
    """Why ``uri``'s /health does not answer, or None when it answers (any HTTP status)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered (auth proxies may refuse /health): reachable
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def answers(uri: str, timeout_s: float = 2.0) -> bool:
    """A cheap probe: an HTTP server answers /health; other stores are assumed to answer."""
    if uri.startswith(("http://", "https://")):
        return _http_failure(uri, timeout_s) is None
    return True


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Raise TrackingUnavailable unless ``uri`` answers (HTTP) or is usable (file store)."""
    if uri.startswith(("http://", "https://")):
        reason = _http_failure(uri, timeout_s)
        if reason is None:
            return
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({reason}). Start it, fix "
            "MLFLOW_TRACKING_URI, or unset it to train without tracking."
        )
    if uri.startswith("file:") or uri.startswith(("/", ".")):
        path = Path(urlparse(uri).path if uri.startswith("file:") else uri)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingUnavailable(f"MLflow file store {uri} is not writable: {exc}") from exc
    # file and sqlite stores, SageMaker managed MLflow (arn:aws:sagemaker:...), databricks:
    # one cheap API call proves the store is usable (MLflow 3 refuses file stores unless
    # MLFLOW_ALLOW_FILE_STORE=true; its message says so)
    try:
        mlflow_client(uri).search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingUnavailable(f"MLflow tracking at {uri} is not usable: {exc}") from None


class MlflowTracker(NullTracker):
    """One MLflow run, written through MlflowClient (no process-global active run).

    Metrics go through a :class:`MetricOutbox`; the closing calls (figures, dicts, the model,
    the run status) go through a :class:`RetryWindow` of ``retry_window_s`` seconds.
    """

    def __init__(
        self, uri: str, run_id: str, retry_window_s: float = TRACKING_RETRY_WINDOW_S
    ) -> None:
        self.uri = uri
        self.run_id: str = run_id
        self.client = mlflow_client(uri)
        self._ended = False
        self._pending_at_end = 0  # metric batches still buffered when the run ended
        self._outbox = MetricOutbox(self._send_metrics, lambda: answers(uri), f"MLflow at {uri}")
        self._window = RetryWindow(retry_window_s, lambda: answers(uri), f"MLflow at {uri}")

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in sorted(params.items()) if k not in existing]
        for i in range(0, len(new), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        batch = [Metric(k, float(v), now_ms, step) for k, v in sorted(metrics.items())]
        if batch:
            self._outbox.put(batch)

    def _send_metrics(self, batch: Sequence[Any]) -> None:
        self.client.log_batch(self.run_id, metrics=list(batch))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._window.call(
            artifact_file, lambda: self.client.log_figure(self.run_id, figure, artifact_file)
        )

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._window.call(
            artifact_file, lambda: self.client.log_dict(self.run_id, dict(data), artifact_file)
        )

    def log_onnx_model(
        self,
        onnx_path: str | os.PathLike[str],
        input_example: np.ndarray,
        output_example: np.ndarray,
        step: int = 0,
    ) -> None:
        """Log the exported ONNX model (flavour ``onnx``) with signature and input example.

        MLflow 3 links the run's metrics at ``step`` to the logged model (copying them into the
        history), so pass the step of the final metrics; the buffered metrics are sent first.
        The model's requirements are named (:func:`serving_requirements`): MLflow would
        otherwise infer them by loading the model in a subprocess and scanning every installed
        distribution, 6 of the 7 s this call took.
        """
        import mlflow
        import mlflow.onnx
        import onnx
        from mlflow.models import infer_signature

        def log_model() -> None:
            mlflow.set_tracking_uri(self.uri)
            # The fluent API refuses a run outside the process's active experiment (an
            # embedding program may have set another one): make the run's experiment active.
            run = self.client.get_run(self.run_id)
            mlflow.set_experiment(experiment_id=run.info.experiment_id)
            mlflow.onnx.log_model(
                onnx.load(os.fspath(onnx_path)),
                name="model",
                signature=infer_signature(input_example, output_example),
                input_example=input_example,
                pip_requirements=serving_requirements(),
                step=step,
                run_id=self.run_id,  # no active run: setting the run's status is end()'s job
            )

        self._window.drain(self._outbox)
        self._window.call("model", log_model)

    def end(self, status: str = "FINISHED") -> None:
        if self._ended and status == "FINISHED":
            return
        if status != "FINISHED":
            self._window.shorten(ABORT_RETRY_WINDOW_S)
        self._window.drain(self._outbox)
        self._pending_at_end = self._outbox.close()
        self._window.call(
            f"run status {status}", lambda: self.client.set_terminated(self.run_id, status=status)
        )
        self._ended = True
        missing = self._window.missing
        if self._pending_at_end or missing:
            lost = [f"{self._pending_at_end} metric batch(es)"] if self._pending_at_end else []
            print(
                f"tracking: WARNING tracking incomplete: MLflow at {self.uri} was unreachable; "
                f"not logged: {', '.join(lost + missing)}. The model is exported and saved "
                f"regardless; MLflow run {self.run_id} is incomplete.",
                flush=True,
            )

    def report(self) -> dict[str, Any]:
        pending = self._pending_at_end if self._ended else self._outbox.pending
        missing = self._window.missing
        return {
            "enabled": True,
            "complete": not (pending or missing or self._outbox.dropped),
            "pending_batches": pending,
            "dropped_batches": self._outbox.dropped,
            "missing": list(missing),
            "retry_window_s": self._window.window_s,
        }


def _experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # another job created it between our get and create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def start_tracking(
    uri: str | None,
    *,
    experiment_name: str | None,
    run_name: str | None,
    checkpoint_dir: str | os.PathLike[str],
    resume: bool,
    tags: Mapping[str, str] | None = None,
    retry_window_s: float = TRACKING_RETRY_WINDOW_S,
) -> NullTracker:
    """A tracker for this job (global rank 0 only); NullTracker when ``uri`` is None.

    With ``resume`` and a run id stored in ``checkpoint_dir``, that run is reopened. An
    unusable server fails here (TrackingUnavailable); one that goes away later does not fail
    the job (``retry_window_s``: see MlflowTracker).
    """
    if not uri:
        print("tracking: MLFLOW_TRACKING_URI not set, MLflow tracking disabled", flush=True)
        return NullTracker()
    check_reachable(uri)
    client = mlflow_client(uri)
    id_file = Path(checkpoint_dir) / RUN_ID_FILE
    run_id: str | None = None
    if resume and id_file.is_file():
        candidate = id_file.read_text().strip()
        try:
            client.get_run(candidate)
            run_id = candidate
            client.update_run(run_id, status="RUNNING")
            print(f"tracking: resuming MLflow run {run_id}", flush=True)
        except Exception as exc:
            log.warning("stored MLflow run %s not usable (%s); starting a new run", candidate, exc)
    if run_id is None:
        exp_id = _experiment_id(client, experiment_name or "lepton")
        run = client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
        run_id = run.info.run_id
        id_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = id_file.with_suffix(".tmp")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, id_file)
        print(f"tracking: MLflow run {run_id} at {uri}", flush=True)
    tracker = MlflowTracker(uri, run_id, retry_window_s)
    if tags:
        tracker.set_tags(tags)
    return tracker


def confusion_matrix_figure(matrix: np.ndarray, classes: list[str]) -> Any:
    """A matplotlib Figure of a confusion matrix (rows: true class, columns: predicted)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    k = len(classes)
    size = min(4 + 0.35 * k, 20)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(matrix, cmap="Blues")
    ticks = range(k)
    ax.set_xticks(list(ticks), classes, rotation=90 if k > 10 else 0)
    ax.set_yticks(list(ticks), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        high = matrix.max() / 2 if matrix.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if matrix[i, j] > high else "black",
                )
    fig.tight_layout()
    return fig
