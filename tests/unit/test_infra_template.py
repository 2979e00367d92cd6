"""Static checks of infra/template.yaml as a whole: cfn-lint and checkov, no hard-coded accounts,
regions or partitions, a body small enough to send inline, the outputs the CLI needs, and the
resources moto's CloudFormation cannot create (the model package group, the MLflow tracking
server). Per concern: test_infra_template_storage.py, _iam.py, _image.py and _triggers.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from infra.iam_policy import statements
from pipelines.aws.stack import TEMPLATE_BODY_MAX_BYTES, TEMPLATE_PATH, validate_template
from tests.unit.infra_template import BUCKETS, RESOURCES, TEMPLATE, _props


def test_cfn_lint_is_clean() -> None:
    assert validate_template() == []


def test_validate_template_reports_findings(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("Resources:\n  B:\n    Type: AWS::S3::Bucket\n    Properties:\n      Nope: 1\n")
    findings = validate_template(bad)
    assert findings and all(str(bad) in f for f in findings)
    assert any("Nope" in f for f in findings)


def test_no_hard_coded_accounts_regions_or_partitions() -> None:
    text = TEMPLATE_PATH.read_text()
    assert not re.search(r"(?<![\d.])\d{12}(?![\d.])", text), "account id"
    assert not re.search(
        r"\b(us|eu|ap|sa|ca|me|af|il|mx)-(east|west|north|south|central|northeast|southeast)-\d\b",
        text,
    )
    assert "arn:aws:" not in text, "use arn:${AWS::Partition}:"
    for logical_id in BUCKETS:
        assert "BucketName" not in _props(logical_id), f"{logical_id}: let CloudFormation name it"


def test_model_package_group_and_mlflow_are_declared() -> None:
    assert _props("ModelPackageGroup")["ModelPackageGroupName"] == {"Ref": "ModelPackageGroupName"}
    for logical_id in ("MlflowTrackingServer", "MlflowTrackingServerRole", "MlflowAccessPolicy"):
        assert RESOURCES[logical_id]["Condition"] == "EnableMlflow"
    assert TEMPLATE["Outputs"]["MlflowTrackingServerArn"]["Condition"] == "EnableMlflow"
    artifacts = statements(_props("MlflowTrackingServerRole")["Policies"][0]["PolicyDocument"])
    assert {"Sub": "${ArtifactBucket.Arn}/mlflow/*"} in [s["Resource"] for s in artifacts]


def test_outputs_cover_what_the_cli_needs() -> None:
    assert {
        "DataBucketName",
        "ArtifactBucketName",
        "KmsKeyArn",
        "SageMakerExecutionRoleArn",
        "CiRoleArn",
        "ModelPackageGroupName",
        "PipelineName",
        "MlflowTrackingServerArn",
    } <= set(TEMPLATE["Outputs"])


def test_template_fits_an_inline_template_body() -> None:
    """deploy_stack sends the template inline; CloudFormation refuses a body over this."""
    assert len(TEMPLATE_PATH.read_bytes()) <= TEMPLATE_BODY_MAX_BYTES


def _checkov() -> str | None:
    for candidate in (
        shutil.which("checkov"),
        TEMPLATE_PATH.parent.parent / ".venv-checkov/bin/checkov",
    ):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def test_checkov_finds_nothing() -> None:
    """Same check as `make infra-validate` (checkov lives in its own venv: it pins an old boto3)."""
    checkov = _checkov()
    if checkov is None:
        pytest.skip("checkov not installed (make infra-validate installs it into .venv-checkov)")
    proc = subprocess.run(
        [
            checkov,
            "-f",
            str(TEMPLATE_PATH),
            "--framework",
            "cloudformation",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
