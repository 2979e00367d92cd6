"""The run record (`.lepton/last-run.json`): one typed summary of a pipeline execution.

Written by the local run (`lepton pipeline run|resume`) and by `lepton pipeline start --wait`
on SageMaker; read by every consumer through `RunRecord.read`: the CLI summary (`text`), the CI
job summary (`markdown`, `lepton pipeline summary --markdown`) and the notebook.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

RECORD_FILE = "last-run.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class StepSummary:
    type: str  # the definition's step type: Processing, Training, Condition, ...
    status: str  # Succeeded | Cached | Skipped | Failed | Executing | Pending
    seconds: float | None = None
    cache: str | None = None  # why it hit or missed the cache
    message: str | None = None  # failure reason, condition outcome, ...


@dataclass(frozen=True)
class RunRecord:
    where: str  # "local" or "aws"
    pipeline_name: str
    execution_id: str  # local execution id, or the SageMaker execution ARN
    status: str  # Succeeded | Failed | Stopped | Executing
    failure: str | None = None
    accuracy: float | None = None  # test accuracy from evaluation.json
    gate_passed: bool | None = None
    gate_reasons: tuple[str, ...] = ()
    model_version: int | None = None  # registered version (MLflow) or package version
    endpoint_url: str | None = None  # set only when the endpoint answered /ping
    mlflow_url: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, StepSummary] = field(default_factory=dict)  # in execution order
    total_seconds: float | None = None
    # {"hosts": H, "processes_per_host": P, "world_size": W} of the training job that ran
    training_topology: dict[str, int] | None = None
    model_name: str | None = None  # the registered model (model package group) of the run
    # the data: its name, profile, and the settings chosen from it (and why)
    data: dict[str, Any] = field(default_factory=dict)
    sample_predictions: tuple[dict[str, Any], ...] = ()  # {"true": label, "predicted": label}
    # training.json's "tracking": {"enabled", "complete", "missing", ...}: whether everything
    # reached MLflow (a tracking outage never fails training; this says what it cost)
    tracking: dict[str, Any] | None = None
    # the Batch step's report (pipelines/batch/core.py) and its "output" prefix, when it ran
    batch: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    # ---- files
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str) + "\n"

    def write(self, state_dir: Path) -> Path:
        """Write atomically to `<state_dir>/last-run.json`; returns the path."""
        path = Path(state_dir) / RECORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["steps"] = {n: StepSummary(**s) for n, s in (data.get("steps") or {}).items()}
        for name in ("gate_reasons", "sample_predictions"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)

    @classmethod
    def read(cls, path: Path | str) -> RunRecord | None:
        """The record at `path` (a file or a state folder), or None when there is none."""
        p = Path(path)
        if p.is_dir():
            p = p / RECORD_FILE
        return cls.from_dict(json.loads(p.read_text())) if p.is_file() else None

    # ---- views
    def text(self) -> list[str]:
        """The summary printed at the end of `lepton pipeline run`."""
        acc = self.accuracy
        lines = ["", f"pipeline {self.status}  (execution {self.execution_id})"]
        if self.failure:
            lines.append(f"  failure:        {self.failure.splitlines()[0]}")
        shown = f"{acc:.4f}" if acc is not None and not math.isnan(acc) else "-"
        lines += [
            f"  accuracy:       {shown}",
            f"  gate passed:    {self.gate_passed}  {'; '.join(self.gate_reasons)}",
            f"  model version:  {self.model_name or '-'} {self.model_version}",
            f"  endpoint:       {self.endpoint_url or '-'}",
            f"  MLflow:         {self.mlflow_url or '-'}",
        ]
        if self.tracking and not self.tracking.get("complete", True):
            missing = ", ".join(self.tracking.get("missing", [])) or "metrics"
            lines.append(f"  tracking:       INCOMPLETE, not in MLflow: {missing}")
        if self.batch:
            b = self.batch
            lines.append(
                f"  batch:          {b.get('predicted')} classified, {b.get('failed')} failed, "
                f"{b.get('skipped')} done before -> {b.get('output')}"
            )
        for name, step in self.steps.items():
            secs = f"{step.seconds:7.1f}s" if step.seconds is not None else "       -"
            lines.append(f"  {name:<22} {secs}  {step.status}")
        if self.total_seconds is not None:
            lines.append(f"  total          {self.total_seconds:14.1f}s")
        return lines

    def markdown(self, title: str = "Retraining") -> str:
        """Markdown for a CI job summary ($GITHUB_STEP_SUMMARY)."""
        lines = [f"## {title}: {self.status}", ""]
        for label, value in (
            ("Pipeline", self.pipeline_name),
            ("Execution", self.execution_id),
            ("Where", self.where),
            ("Endpoint", self.endpoint_url),
            ("Failure", self.failure),
        ):
            if value:
                lines.append(f"- **{label}**: `{_cell(str(value))}`")
        if self.tracking and not self.tracking.get("complete", True):
            missing = ", ".join(self.tracking.get("missing", [])) or "metrics"
            lines.append(f"- **Tracking**: incomplete, not in MLflow: {_cell(missing)}")
        if self.gate_passed is not None:
            verdict = "passed" if self.gate_passed else "failed"
            reasons = "; ".join(self.gate_reasons)
            lines.append(
                f"- **Quality gate**: {verdict}" + (f" ({_cell(reasons)})" if reasons else "")
            )
        if self.accuracy is not None or self.model_version is not None:
            lines += ["", "| metric | value |", "| --- | --- |"]
            if self.accuracy is not None:
                lines.append(f"| accuracy | {self.accuracy:.4f} |")
            if self.model_version is not None:
                lines.append(f"| model version | {self.model_version} |")
        if self.steps:
            lines += ["", "| step | status | seconds | note |", "| --- | --- | --- | --- |"]
            for name, s in self.steps.items():
                note = _cell(s.message or s.cache or "")[:200]
                secs = f"{s.seconds:.1f}" if s.seconds is not None else ""
                lines.append(f"| {name} | {s.status} | {secs} | {note} |")
        if self.mlflow_url:
            lines += ["", f"Links: [MLflow]({self.mlflow_url})"]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def missing_markdown(title: str = "Retraining") -> str:
    return f"## {title}\n\nNo run record was written (`.lepton/{RECORD_FILE}`); see the job log.\n"
