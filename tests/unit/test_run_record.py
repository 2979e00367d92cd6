"""The run record: the local run's writer (`summarize` + `RunRecord.write`) feeds every reader
(the CLI summary, the CI job summary, the notebook), through one type."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.runner.record import RunRecord
from pipelines.runner.run import summarize
from pipelines.runner.state import Execution, StepRecord
from pipelines.settings import Settings


def _execution(state: Path) -> Execution:
    ex = Execution.new(state, "lepton", {"Epochs": 3, "AccuracyThreshold": 0.9})
    ex.status = "Succeeded"
    ex.steps = {
        "Prepare": StepRecord("Prepare", "Processing", "Succeeded", 0.0, 4.0),
        "Train": StepRecord(
            "Train",
            "Training",
            "Cached",
            4.0,
            4.5,
            cache_note="cache hit (from execution x)",
            properties={
                "Lepton": {
                    "training": {
                        "tracking": {
                            "enabled": True,
                            "complete": False,
                            "missing": ["model", "run status FINISHED"],
                        }
                    }
                }
            },
        ),
        "Evaluate": StepRecord(
            "Evaluate",
            "Processing",
            "Succeeded",
            4.5,
            6.0,
            property_files={
                "EvaluationReport": {
                    "multiclass_classification_metrics": {
                        "accuracy": {"value": 0.9871, "standard_deviation": "NaN"},
                        "macro_f1": {"value": 0.98, "standard_deviation": "NaN"},
                    }
                }
            },
        ),
        "QualityGate": StepRecord(
            "QualityGate",
            "Condition",
            "Succeeded",
            6.0,
            6.0,
            properties={"Outcome": True, "Reasons": ["accuracy | 0.9871 >= 0.9000: yes"]},
        ),
        "Register": StepRecord(
            "Register",
            "RegisterModel",
            "Succeeded",
            6.0,
            6.5,
            properties={"ModelPackageVersion": 3},
        ),
        "Deploy": StepRecord("Deploy", "Processing", "Succeeded", 6.5, 9.0),
        "GateFailed": StepRecord("GateFailed", "Fail", "Skipped", message="condition was True"),
    }
    ex.save()
    return ex


def test_the_local_writer_feeds_the_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # port 9 on loopback: nothing answers /ping, so the record must not claim an endpoint
    settings = Settings(state_dir=tmp_path / "state", endpoint_port=9)
    record = summarize(settings, _execution(settings.state_dir), 12.34, out=lambda _m: None)
    assert (record.status, record.accuracy, record.gate_passed) == ("Succeeded", 0.9871, True)
    assert record.model_version == 3 and record.endpoint_url is None
    assert record.steps["Train"].status == "Cached" and record.steps["Prepare"].seconds == 4.0
    assert record.parameters == {"Epochs": 3, "AccuracyThreshold": 0.9}
    path = record.write(settings.state_dir)
    assert path.name == "last-run.json" and RunRecord.read(path) == record
    assert RunRecord.read(settings.state_dir) == record

    text = record.markdown()
    assert text.startswith("## Retraining: Succeeded")
    assert "| accuracy | 0.9871 |" in text and "| model version | 3 |" in text
    assert "**Quality gate**: passed" in text
    assert "accuracy \\| 0.9871" in text  # a pipe in a reason does not break the table
    assert "| Train | Cached | 0.5 | cache hit (from execution x) |" in text
    assert f"[MLflow]({settings.tracking_uri})" in text
    assert record.tracking is not None and record.tracking["complete"] is False
    assert "- **Tracking**: incomplete, not in MLflow: model, run status FINISHED" in text

    # the CI job summary and the CLI read the same file
    monkeypatch.setenv("LEPTON_STATE_DIR", str(settings.state_dir))
    assert main(["pipeline", "summary", "--markdown", "--title", "Retraining"]) == 0
    assert capsys.readouterr().out.strip() == text.strip()
    assert main(["pipeline", "summary"]) == 0
    shown = capsys.readouterr().out
    assert "accuracy:       0.9871" in shown
    assert "tracking:       INCOMPLETE, not in MLflow: model, run status FINISHED" in shown


def test_a_missing_record_is_said_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEPTON_STATE_DIR", str(tmp_path))
    assert RunRecord.read(tmp_path) is None
    assert main(["pipeline", "summary", "--markdown"]) == 0  # the job summary still renders
    assert "No run record" in capsys.readouterr().out
