"""The deployed triggers: EventBridge rules and their targets (patterns probed on a bus of
their own, since moto lacks TestEventPattern), the start and deploy Lambda functions' settings
and invoke permissions, and a second stack with the schedule and reserved concurrency off.
See this package's __init__ for what moto's CloudFormation does not do."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.iam_policy import evaluate
from pipelines.aws.stack import deploy_stack
from tests.integration.infra_moto.stack import (
    OTHER_BUCKET,
    PARAMS,
    REGION,
    STACK,
    _function_role,
    _role_docs,
)

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS::")


def test_rules_target_the_start_and_the_deploy_function(aws: dict[str, Any]) -> None:
    events, out = aws["client"]("events"), aws["outputs"]
    rules = {
        r["Name"].split("-")[2]: r
        for r in events.list_rules()["Rules"]
        if r["Name"].startswith(STACK)
    }
    assert set(rules) == {"RetrainScheduleRule", "NewDataRule", "ModelApprovedRule"}
    assert rules["RetrainScheduleRule"]["ScheduleExpression"] == "rate(7 days)"
    account = out["KmsKeyArn"].split(":")[4]
    pipeline_arn = f"arn:aws:sagemaker:{REGION}:{account}:pipeline/{out['PipelineName']}"
    for key in ("RetrainScheduleRule", "NewDataRule"):
        (target,) = events.list_targets_by_rule(Rule=rules[key]["Name"])["Targets"]
        assert target["Arn"] == out["StartFunctionArn"]
        assert "RoleArn" not in target  # Lambda targets are invoked through a permission
    (deploy,) = events.list_targets_by_rule(Rule=rules["ModelApprovedRule"]["Name"])["Targets"]
    assert deploy["Arn"] == out["DeployFunctionArn"]
    trigger_docs = _role_docs(aws["client"]("iam"), _function_role(aws, "StartFunctionArn"))
    assert evaluate(trigger_docs, "sagemaker:StartPipelineExecution", pipeline_arn) == "allow"
    assert (
        evaluate(trigger_docs, "sagemaker:StartPipelineExecution", pipeline_arn + "-other")
        == "implicit-deny"
    )


def _deliveries(
    aws: dict[str, Any], rule_fragment: str, events_in: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Put events on a probe bus whose rule has the deployed rule's pattern; return the details
    that reached the rule's SQS target. (A separate bus keeps the real targets out of it.)"""
    events, sqs = aws["client"]("events"), aws["client"]("sqs")
    rule = next(r for r in events.list_rules()["Rules"] if rule_fragment in r["Name"])
    bus = f"probe-{rule_fragment.lower()}"
    events.create_event_bus(Name=bus)
    url = sqs.create_queue(QueueName=bus)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(Name="probe", EventBusName=bus, EventPattern=rule["EventPattern"])
    events.put_targets(Rule="probe", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    entries = [
        {
            "EventBusName": bus,
            "Source": e["source"],
            "DetailType": e["detail-type"],
            "Detail": json.dumps(e["detail"]),
        }
        for e in events_in
    ]
    assert events.put_events(Entries=entries)["FailedEntryCount"] == 0
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"])["detail"] for m in messages]


def test_new_data_rule_fires_once_per_marked_upload(aws: dict[str, Any]) -> None:
    data = aws["outputs"]["DataBucketName"]
    cases = [
        (data, "raw/batch-7/_READY"),
        (data, "raw/_READY"),
        (data, "raw/batch-7/cat/0001.png"),
        (data, "staging/batch-7/_READY"),
        (OTHER_BUCKET, "raw/batch-7/_READY"),
    ]
    sent = [
        {
            "source": "aws.s3",
            "detail-type": "Object Created",
            "detail": {"bucket": {"name": b}, "object": {"key": k, "size": 1}},
        }
        for b, k in cases
    ]
    sent.append(
        {
            "source": "aws.s3",
            "detail-type": "Object Deleted",
            "detail": {"bucket": {"name": data}, "object": {"key": "raw/_READY"}},
        }
    )
    got = {(d["bucket"]["name"], d["object"]["key"]) for d in _deliveries(aws, "NewDataRule", sent)}
    # One image is not a run; only the marker under the raw prefix of this bucket is.
    assert got == {(data, "raw/batch-7/_READY"), (data, "raw/_READY")}


def test_model_approved_rule_matches_only_approvals_in_this_group(aws: dict[str, Any]) -> None:
    cases = [
        ("lepton-classifier", "Approved"),
        ("lepton-classifier", "PendingManualApproval"),
        ("lepton-classifier", "Rejected"),
        ("another-group", "Approved"),
    ]
    sent = [
        {
            "source": "aws.sagemaker",
            "detail-type": "SageMaker Model Package State Change",
            "detail": {"ModelPackageGroupName": g, "ModelApprovalStatus": s},
        }
        for g, s in cases
    ]
    got = {
        (d["ModelPackageGroupName"], d["ModelApprovalStatus"])
        for d in _deliveries(aws, "ModelApprovedRule", sent)
    }
    assert got == {("lepton-classifier", "Approved")}


def test_deploy_function_configuration(aws: dict[str, Any]) -> None:
    lam, out = aws["client"]("lambda"), aws["outputs"]
    fn = lam.get_function(FunctionName=out["DeployFunctionArn"])["Configuration"]
    assert (
        lam.get_function_concurrency(FunctionName=out["DeployFunctionArn"])[
            "ReservedConcurrentExecutions"
        ]
        == 1
    )
    env = fn["Environment"]["Variables"]
    assert env["ENDPOINT_NAME"] == out["EndpointName"]
    assert env["EXECUTION_ROLE_ARN"] == out["SageMakerExecutionRoleArn"]
    assert env["KMS_KEY_ARN"] == out["KmsKeyArn"]
    docs = _role_docs(aws["client"]("iam"), fn["Role"])
    account = out["KmsKeyArn"].split(":")[4]
    arn = f"arn:aws:sagemaker:{REGION}:{account}"
    assert (
        evaluate(docs, "sagemaker:UpdateEndpoint", f"{arn}:endpoint/{out['EndpointName']}")
        == "allow"
    )
    assert (
        evaluate(docs, "sagemaker:UpdateEndpoint", f"{arn}:endpoint/someone-else")
        == "implicit-deny"
    )
    assert (
        evaluate(docs, "sagemaker:CreateModel", f"{arn}:model/{out['EndpointName']}-v4") == "allow"
    )
    assert (
        evaluate(docs, "sagemaker:DeleteEndpoint", f"{arn}:endpoint/{out['EndpointName']}")
        == "implicit-deny"
    )


def test_start_function_configuration(aws: dict[str, Any]) -> None:
    lam, out = aws["client"]("lambda"), aws["outputs"]
    fn = lam.get_function(FunctionName=out["StartFunctionArn"])["Configuration"]
    concurrency = lam.get_function_concurrency(FunctionName=out["StartFunctionArn"])
    assert concurrency["ReservedConcurrentExecutions"] == 1
    # (moto hands a Number parameter through as a number; Lambda stores every value as text)
    env = {k: str(v) for k, v in fn["Environment"]["Variables"].items()}
    assert env == {
        "PIPELINE_NAME": out["PipelineName"],
        "MODEL_PACKAGE_GROUP": out["ModelPackageGroupName"],
        "CHAMPION_TOLERANCE": "0.005",
    }
    # moto keeps neither KmsKeyArn nor DeadLetterConfig (both checked on the template); the
    # queue itself is created
    sqs = aws["client"]("sqs")
    (url,) = sqs.list_queues(QueueNamePrefix=f"{STACK}-StartDeadLetterQueue-")["QueueUrls"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["MessageRetentionPeriod"] == "1209600"
    (group,) = aws["client"]("logs").describe_log_groups(
        logGroupNamePrefix=f"/aws/lambda/{STACK}-start-pipeline"
    )["logGroups"]
    assert group["retentionInDays"] == 365
    # Each rule may invoke it, and nothing else: one permission per rule, bound to its ARN.
    rules = {
        r["Name"].split("-")[2]: r["Arn"]
        for r in aws["client"]("events").list_rules()["Rules"]
        if r["Name"].startswith(STACK)
    }
    policy = json.loads(lam.get_policy(FunctionName=out["StartFunctionArn"])["Policy"])
    sources = sorted(
        st["Condition"]["ArnLike"]["AWS:SourceArn"]
        for st in policy["Statement"]
        if st["Principal"] == {"Service": "events.amazonaws.com"}
    )
    assert sources == sorted([rules["RetrainScheduleRule"], rules["NewDataRule"]])
    assert len(policy["Statement"]) == 2


def test_schedule_and_reserved_concurrency_can_be_switched_off(aws: dict[str, Any]) -> None:
    cfn, events, lam = (
        aws["client"]("cloudformation"),
        aws["client"]("events"),
        aws["client"]("lambda"),
    )
    params = {
        **PARAMS,
        "RetrainSchedule": "",
        "DeployFunctionConcurrency": "0",
        "NewDataMarker": "",
    }
    result = deploy_stack("lepton-minimal", cfn, parameters=params, poll_seconds=0)
    assert result.action == "created"
    rules = [r for r in events.list_rules()["Rules"] if r["Name"].startswith("lepton-minimal")]
    assert rules and not any("RetrainScheduleRule" in r["Name"] for r in rules)
    new_data = next(r for r in rules if "NewDataRule" in r["Name"])
    assert json.loads(new_data["EventPattern"])["detail"]["object"]["key"] == [{"prefix": "raw/"}]
    for function in ("DeployFunctionArn", "StartFunctionArn"):
        concurrency = lam.get_function_concurrency(FunctionName=result.outputs[function])
        assert "ReservedConcurrentExecutions" not in concurrency, function
    # No schedule, no permission for it: the new-data rule is the function's only caller.
    policy = json.loads(lam.get_policy(FunctionName=result.outputs["StartFunctionArn"])["Policy"])
    (only,) = policy["Statement"]
    assert only["Condition"]["ArnLike"]["AWS:SourceArn"] == new_data["Arn"]
