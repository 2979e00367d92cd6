"""pipelines/infra.py: deploy/outputs against moto's CloudFormation, env export, summaries."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from pipelines.infra import (
    DeployResult,
    StackError,
    deploy_stack,
    format_env,
    load_run,
    parse_parameters,
    run_summary_markdown,
    settings_env,
    stack_outputs,
    template_parameters,
)
from pipelines.settings import load_settings

SMALL = """\
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  Owner: {Type: String}
  Retention: {Type: Number, Default: 7}
Resources:
  Setting:
    Type: AWS::SSM::Parameter
    Properties:
      Name: !Sub "/${AWS::StackName}/setting"
      Type: String
      Value: !Sub "${Owner}/${Retention}"
Outputs:
  SettingName: {Value: !Ref Setting}
  Owner: {Value: !Ref Owner}
  Retention: {Value: !Ref Retention}
"""


@pytest.fixture
def cfn() -> Iterator[Any]:
    with mock_aws(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield boto3.client("cloudformation", region_name="us-east-1")


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


def test_create_then_unchanged_then_update_keeps_previous_values(cfn: Any, small: Path) -> None:
    created = deploy_stack(
        "s", cfn, template_path=small, parameters={"Owner": "acme"}, poll_seconds=0
    )
    assert created.action == "created"
    assert created.outputs["Owner"] == "acme" and created.outputs["SettingName"]
    again = deploy_stack(
        "s", cfn, template_path=small, parameters={"Owner": "acme"}, poll_seconds=0
    )
    assert again == DeployResult("s", "unchanged", created.outputs)
    # Owner is not repeated: it keeps its previous value; Retention changes.
    updated = deploy_stack(
        "s", cfn, template_path=small, parameters={"Retention": "30"}, poll_seconds=0
    )
    assert updated.action == "updated"
    assert updated.outputs["Owner"] == "acme" and updated.outputs["Retention"] == "30"
    assert stack_outputs("s", cfn) == updated.outputs


def test_unknown_parameter_is_refused_before_any_call(cfn: Any, small: Path) -> None:
    with pytest.raises(ValueError, match="unknown template parameters: Ownr"):
        deploy_stack("s", cfn, template_path=small, parameters={"Ownr": "x"})
    with pytest.raises(StackError, match="does not exist"):
        stack_outputs("s", cfn)


def test_outputs_of_a_missing_stack(cfn: Any) -> None:
    with pytest.raises(StackError, match="lepton infra deploy"):
        stack_outputs("nope", cfn)


class _FakeCfn:
    def __init__(self, status: str) -> None:
        self.status = status

    def describe_stacks(self, StackName: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        return {"Stacks": [{"StackName": StackName, "StackStatus": self.status, "Parameters": []}]}


@pytest.mark.parametrize(
    ("status", "match"), [("ROLLBACK_COMPLETE", "delete it"), ("UPDATE_IN_PROGRESS", "wait")]
)
def test_stuck_stacks_are_explained(small: Path, status: str, match: str) -> None:
    with pytest.raises(StackError, match=match):
        deploy_stack("s", _FakeCfn(status), template_path=small, parameters={"Owner": "a"})


def test_the_real_template_deploys_and_feeds_settings(cfn: Any) -> None:
    params = {"GitHubOwner": "acme", "GitHubRepo": "lepton", "CreateGitHubOidcProvider": "false"}
    result = deploy_stack("lepton", cfn, parameters=params, poll_seconds=0)
    env = settings_env(result.outputs)
    settings = load_settings(env)
    assert settings.mode == "aws"
    assert settings.data_bucket == result.outputs["DataBucketName"]
    assert (
        settings.artifact_bucket == settings.mlflow_bucket == result.outputs["ArtifactBucketName"]
    )
    assert settings.registered_model_name == "lepton-classifier"
    assert env["LEPTON_SAGEMAKER_ROLE_ARN"] == result.outputs["SageMakerExecutionRoleArn"]
    assert "MLFLOW_TRACKING_URI" not in env  # no tracking server by default


def test_settings_env_maps_the_tracking_server() -> None:
    arn = "arn:aws:sagemaker:eu-west-1:111122223333:mlflow-tracking-server/x"
    assert settings_env({"MlflowTrackingServerArn": arn})["MLFLOW_TRACKING_URI"] == arn


def test_format_env_and_parse_parameters() -> None:
    assert format_env({"A": "1", "B": "x=y"}) == "A=1\nB=x=y\n"
    with pytest.raises(ValueError, match="newline"):
        format_env({"A": "1\nB=2"})
    assert parse_parameters(["GitHubOwner=acme", "X=a=b", "Empty="]) == {
        "GitHubOwner": "acme",
        "X": "a=b",
        "Empty": "",
    }
    for bad in ("novalue", "=x"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_parameters([bad])


def test_template_parameters_reads_the_real_template() -> None:
    params = template_parameters()
    assert {
        "GitHubOwner",
        "GitHubRepo",
        "GitHubBranch",
        "PipelineName",
        "EnableMlflowTrackingServer",
    } <= set(params)
    assert "Default" not in params["GitHubOwner"]  # must be given on first deploy


def test_summary_of_a_local_run_record(tmp_path: Path) -> None:
    run = {
        "id": "20260101-000000-abc123",
        "pipeline_name": "lepton",
        "status": "Succeeded",
        "steps": {
            "Prepare": {"type": "Processing", "status": "Succeeded", "started": 0, "ended": 1},
            "Evaluate": {
                "type": "Processing",
                "status": "Succeeded",
                "property_files": {
                    "EvaluationReport": {
                        "multiclass_classification_metrics": {
                            "accuracy": {"value": 0.9871, "standard_deviation": "NaN"},
                            "macro_f1": {"value": 0.98},
                        }
                    }
                },
            },
            "AccuracyGate": {
                "type": "Condition",
                "status": "Succeeded",
                "properties": {"Outcome": "True"},
                "message": "accuracy | 0.987 >= 0.9",
            },
        },
        "links": {"MLflow": "http://127.0.0.1:5001/#/experiments/1"},
    }
    path = tmp_path / "last-run.json"
    path.write_text(json.dumps(run))
    text = run_summary_markdown(load_run(path))
    assert text.startswith("## Retraining: Succeeded")
    assert "| accuracy | 0.9871 |" in text and "| macro_f1 | 0.9800 |" in text
    assert "**Quality gate**: passed" in text
    assert "accuracy \\| 0.987" in text  # a pipe in a note does not break the table
    assert "[MLflow](http://127.0.0.1:5001/#/experiments/1)" in text


def test_summary_with_explicit_gate_and_metrics_and_without_a_record(tmp_path: Path) -> None:
    text = run_summary_markdown(
        {
            "status": "Failed",
            "execution_arn": "arn:aws:sagemaker:eu-west-1:1:pipeline/lepton/execution/x",
            "gate": {"passed": False, "accuracy": 0.7, "threshold": 0.9},
            "metrics": {"accuracy": 0.7},
            "steps": [{"name": "Train", "status": "Failed", "message": "OOM"}],
        }
    )
    assert "## Retraining: Failed" in text
    assert "**Quality gate**: failed (accuracy=0.7, threshold=0.9)" in text
    assert "| Train | Failed |  | OOM |" in text
    assert load_run(tmp_path / "missing.json") is None
    assert "No run record" in run_summary_markdown(None)


def test_cloudformation_client_uses_the_settings_region() -> None:
    from pipelines.infra import cloudformation_client

    client = cloudformation_client(load_settings({"AWS_REGION": "eu-central-1"}))
    assert client.meta.region_name == "eu-central-1"
