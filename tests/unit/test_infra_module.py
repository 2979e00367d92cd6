"""pipelines/aws/stack.py: deploy/outputs against moto's CloudFormation, env export."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from pipelines.aws.stack import (
    DeployResult,
    StackError,
    deploy_stack,
    format_env,
    settings_env,
    stack_outputs,
    template_parameters,
)
from pipelines.cli.args import parse_pairs
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
    assert settings.sagemaker_role_arn == result.outputs["SageMakerExecutionRoleArn"]
    assert settings.pipeline_name == result.outputs["PipelineName"]
    assert "MLFLOW_TRACKING_URI" not in env  # no tracking server by default


def test_every_exported_variable_is_read_by_the_settings() -> None:
    """`lepton infra outputs --format env` exports nothing that no module reads."""
    from pipelines.aws.stack import OUTPUT_ENV

    plain = load_settings({"LEPTON_MODE": "aws"})
    for output, variable in OUTPUT_ENV.items():
        value = f"s3://x/{output}" if "Uri" in output else f"value-of-{output}"
        changed = load_settings({"LEPTON_MODE": "aws", variable: value})
        assert changed != plain, f"{variable} (stack output {output}) is read by nothing"


def test_settings_env_maps_the_tracking_server() -> None:
    arn = "arn:aws:sagemaker:eu-west-1:111122223333:mlflow-tracking-server/x"
    assert settings_env({"MlflowTrackingServerArn": arn})["MLFLOW_TRACKING_URI"] == arn


def test_format_env_and_parse_parameters() -> None:
    assert format_env({"A": "1", "B": "x=y"}) == "A=1\nB=x=y\n"
    with pytest.raises(ValueError, match="newline"):
        format_env({"A": "1\nB=2"})
    assert parse_pairs(["GitHubOwner=acme", "X=a=b", "Empty="]) == {
        "GitHubOwner": "acme",
        "X": "a=b",
        "Empty": "",
    }
    for bad in ("novalue", "=x"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_pairs([bad])
    with pytest.raises(ValueError, match="given twice"):
        parse_pairs(["A=1", "A=2"])


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


def test_cloudformation_client_uses_the_settings_region() -> None:
    from pipelines.aws.clients import cloudformation_client

    client = cloudformation_client(load_settings({"AWS_REGION": "eu-central-1"}))
    assert client.meta.region_name == "eu-central-1"
