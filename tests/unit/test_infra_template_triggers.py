"""Triggers and approval in infra/template.yaml, statically: the template's IAM documents resolved
for one stack and evaluated with infra/iam_policy.py, condition keys included (what moto's IAM
enforcement cannot do). The execution role registers models pending approval and never approves
nor deploys, CI writes only code and runs the pipeline, the start function starts it and reads
the champion, only the deploy function touches the endpoint, approving is a person's policy; the
rules invoke the start function, which is configured like the deploy function."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.iam_policy import allowing_statements, evaluate
from pipelines.definition import names as n
from pipelines.definition.build import _code_prefix
from pipelines.definition.config import APPROVED, PENDING, REJECTED, PipelineConfig
from tests.unit.infra_template import RESOURCES, TEMPLATE, _of_type, _props, _resolve

# The template's IAM documents resolved for one stack (parameters at their defaults), then
# asked what they allow with infra/iam_policy.py, condition keys included.
ACCOUNT, REGION = "111122223333", "eu-west-1"
SM = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
ART, DATA = "lepton-artifacts-x1", "lepton-data-x1"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0f1e2d3c-aaaa-bbbb-cccc-123456789abc"


class _StackValues(dict[str, str]):
    """What Ref, GetAtt and ${...} give; a resource not listed gets a placeholder ARN."""

    def __missing__(self, key: str) -> str:
        return f"arn:aws:test:::{key}"


STACK_VALUES = _StackValues(
    {
        **{name: str(p.get("Default", "x")) for name, p in TEMPLATE["Parameters"].items()},
        "AWS::Partition": "aws",
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "AWS::StackName": "lepton",
        "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/lepton/0f1e2d3c",
        "ArtifactBucket": ART,
        "ArtifactBucket.Arn": f"arn:aws:s3:::{ART}",
        "DataBucket": DATA,
        "DataBucket.Arn": f"arn:aws:s3:::{DATA}",
        "DataKey": KEY_ARN.rsplit("/", 1)[1],
        "DataKey.Arn": KEY_ARN,
    }
)
CFG = PipelineConfig()
PACKAGE = f"{SM}:model-package/{CFG.model_package_group}/7"
ENDPOINT = f"{SM}:endpoint/{CFG.endpoint_name}"
PIPELINE = f"{SM}:pipeline/{CFG.pipeline_name}"
EXECUTION = f"{CFG.prefix}/executions/0a1b2c3d4e5f"
EVALUATION = (
    f"arn:aws:s3:::{ART}/{EXECUTION}/{n.EVALUATE}/{n.EVALUATION_OUTPUT}/{n.EVALUATION_FILE}"
)
CODE = f"arn:aws:s3:::{ART}/{_code_prefix(CFG)}/0123abcd4567ef89/sourcedir.tar.gz"
MODEL = f"arn:aws:s3:::{ART}/models/run/output/model.tar.gz"
DATASET = f"arn:aws:s3:::{ART}/{EXECUTION}/{n.PREPARE}/dataset/manifest.json"
PENDING_STATUS = {"sagemaker:ModelApprovalStatus": PENDING}
APPROVED_STATUS = {"sagemaker:ModelApprovalStatus": APPROVED}
ROLES = sorted(_of_type("AWS::IAM::Role"))


def _role_policies(role_id: str) -> list[dict[str, Any]]:
    """Every policy document in force for the role: inline, and policies naming it."""
    docs = [p["PolicyDocument"] for p in _props(role_id).get("Policies", [])]
    for res in RESOURCES.values():
        policy = res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
        if policy and {"Ref": role_id} in res["Properties"].get("Roles", []):
            docs.append(res["Properties"]["PolicyDocument"])
    managed = [RESOURCES[a["Ref"]] for a in _props(role_id).get("ManagedPolicyArns", [])]
    return list(_resolve(docs + [m["Properties"]["PolicyDocument"] for m in managed], STACK_VALUES))


def _decision(
    role_id: str, action: str, resource: str, context: dict[str, str] | None = None
) -> str:
    return evaluate(_role_policies(role_id), action, resource, context)


def test_execution_role_is_not_even_allowed_to_approve_or_deploy() -> None:
    """Beyond the Denies: no statement of its own allows what approving or deploying takes."""
    docs = _role_policies("SageMakerExecutionRole")
    for action in (
        "sagemaker:UpdateModelPackage",
        "sagemaker:CreateEndpoint",
        "sagemaker:UpdateEndpoint",
        "sagemaker:DeleteEndpoint",
        "sagemaker:CreateEndpointConfig",
        "sagemaker:CreateModel",
    ):
        assert allowing_statements(docs, action) == [], action


@pytest.mark.parametrize(
    ("action", "resource", "context", "expected"),
    [
        ("sagemaker:CreateModelPackage", PACKAGE, PENDING_STATUS, "allow"),
        ("sagemaker:CreateModelPackage", PACKAGE, APPROVED_STATUS, "deny"),
        (
            "sagemaker:CreateModelPackage",
            PACKAGE,
            {"sagemaker:ModelApprovalStatus": REJECTED},
            "deny",
        ),
        ("sagemaker:CreateModelPackage", PACKAGE, {}, "deny"),  # no status given: refused too
        ("sagemaker:UpdateModelPackage", PACKAGE, APPROVED_STATUS, "deny"),
        ("sagemaker:UpdateModelPackage", PACKAGE, PENDING_STATUS, "deny"),
        ("sagemaker:CreateEndpoint", ENDPOINT, {}, "deny"),
        ("sagemaker:UpdateEndpoint", ENDPOINT, {}, "deny"),
        ("sagemaker:DeleteEndpoint", ENDPOINT, {}, "deny"),
        (
            "sagemaker:CreateEndpointConfig",
            f"{SM}:endpoint-config/{CFG.endpoint_name}-v7",
            {},
            "deny",
        ),
        ("sagemaker:CreateModel", f"{SM}:model/{CFG.endpoint_name}-v7", {}, "implicit-deny"),
        # what the pipeline still does
        ("sagemaker:CreateTrainingJob", f"{SM}:training-job/lepton-train-1", {}, "allow"),
        ("sagemaker:DescribeModelPackage", PACKAGE, {}, "allow"),
        ("s3:PutObject", MODEL, {}, "allow"),
    ],
)
def test_execution_role_registers_pending_approval_and_never_approves_nor_deploys(
    action: str, resource: str, context: dict[str, str], expected: str
) -> None:
    assert _decision("SageMakerExecutionRole", action, resource, context) == expected


@pytest.mark.parametrize(
    ("action", "resource", "context", "expected"),
    [
        ("s3:PutObject", CODE, {}, "allow"),
        ("s3:GetObject", CODE, {}, "allow"),  # upsert skips code already uploaded (HeadObject)
        ("s3:PutObject", MODEL, {}, "implicit-deny"),
        ("s3:PutObject", EVALUATION, {}, "implicit-deny"),
        (
            "s3:PutObject",
            DATASET,
            {},
            "implicit-deny",
        ),
        ("s3:PutObject", f"arn:aws:s3:::{ART}/checkpoints/run/last.ckpt", {}, "implicit-deny"),
        ("s3:PutObject", f"arn:aws:s3:::{ART}/pipeline/codex/x", {}, "implicit-deny"),
        ("s3:DeleteObject", CODE, {}, "implicit-deny"),
        ("s3:GetObject", EVALUATION, {}, "allow"),  # `lepton pipeline start`: the champion
        ("s3:ListBucket", f"arn:aws:s3:::{DATA}", {"s3:prefix": "raw/mnist-5k"}, "allow"),
        ("s3:ListBucket", f"arn:aws:s3:::{DATA}", {"s3:prefix": "private/"}, "implicit-deny"),
        ("s3:GetObject", f"arn:aws:s3:::{DATA}/raw/mnist-5k/0/1.png", {}, "implicit-deny"),
        ("sagemaker:UpdatePipeline", PIPELINE, {}, "allow"),
        ("sagemaker:StartPipelineExecution", PIPELINE, {}, "allow"),
        ("sagemaker:UpdateModelPackage", PACKAGE, APPROVED_STATUS, "implicit-deny"),
        ("sagemaker:CreateModelPackage", PACKAGE, APPROVED_STATUS, "implicit-deny"),
        ("sagemaker:UpdateEndpoint", ENDPOINT, {}, "implicit-deny"),
    ],
)
def test_ci_role_writes_only_code_and_runs_the_pipeline(
    action: str, resource: str, context: dict[str, str], expected: str
) -> None:
    assert _decision("CiRole", action, resource, context) == expected


@pytest.mark.parametrize(
    ("action", "resource", "expected"),
    [
        ("sagemaker:StartPipelineExecution", PIPELINE, "allow"),
        ("sagemaker:StartPipelineExecution", PIPELINE + "-other", "implicit-deny"),
        ("sagemaker:ListModelPackages", "*", "allow"),  # List* takes no resource
        ("sagemaker:DescribeModelPackage", PACKAGE, "allow"),
        ("sagemaker:DescribeModelPackage", f"{SM}:model-package/other-group/7", "implicit-deny"),
        ("s3:GetObject", EVALUATION, "allow"),
        ("kms:Decrypt", KEY_ARN, "allow"),  # the artifact bucket is SSE-KMS
        ("s3:GetObject", MODEL, "implicit-deny"),
        (
            "s3:GetObject",
            DATASET,
            "implicit-deny",
        ),
        ("s3:PutObject", EVALUATION, "implicit-deny"),
        ("sagemaker:UpdateModelPackage", PACKAGE, "implicit-deny"),
        ("sagemaker:UpdateEndpoint", ENDPOINT, "implicit-deny"),
        ("sagemaker:UpdatePipeline", PIPELINE, "implicit-deny"),
        ("iam:PassRole", "arn:aws:test:::SageMakerExecutionRole.Arn", "implicit-deny"),
        ("sqs:SendMessage", "arn:aws:test:::StartDeadLetterQueue.Arn", "allow"),
        ("logs:PutLogEvents", "arn:aws:test:::StartFunctionLogGroup.Arn", "allow"),
    ],
)
def test_start_function_role_starts_the_pipeline_and_reads_the_champion(
    action: str, resource: str, expected: str
) -> None:
    assert _decision("StartFunctionRole", action, resource) == expected


def test_only_the_deploy_function_touches_the_endpoint() -> None:
    for action in ("sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint"):
        allowed = {r for r in ROLES if _decision(r, action, ENDPOINT) == "allow"}
        assert allowed == {"DeployFunctionRole"}, action
    assert (
        _decision("DeployFunctionRole", "sagemaker:UpdateEndpoint", f"{SM}:endpoint/x") != "allow"
    )
    for role in ROLES:
        assert _decision(role, "sagemaker:DeleteEndpoint", ENDPOINT) != "allow", role
        assert _decision(role, "sagemaker:UpdateModelPackage", PACKAGE, APPROVED_STATUS) != "allow"


def test_approving_is_a_persons_policy_attached_to_no_role() -> None:
    approver = _resolve(_props("ModelApproverPolicy")["PolicyDocument"], STACK_VALUES)
    assert evaluate(approver, "sagemaker:UpdateModelPackage", PACKAGE, APPROVED_STATUS) == "allow"
    assert evaluate(approver, "sagemaker:ListModelPackages", "*") == "allow"
    other_group = f"{SM}:model-package/other-group/7"
    assert evaluate(approver, "sagemaker:UpdateModelPackage", other_group) == "implicit-deny"
    assert evaluate(approver, "sagemaker:UpdateEndpoint", ENDPOINT) == "implicit-deny"
    assert not {"Roles", "Users", "Groups"} & set(_props("ModelApproverPolicy"))
    references = json.dumps(RESOURCES).count('{"Ref": "ModelApproverPolicy"}')
    assert references == 0  # no role lists it in ManagedPolicyArns either
    assert TEMPLATE["Outputs"]["ModelApproverPolicyArn"]["Value"] == {"Ref": "ModelApproverPolicy"}


def test_only_the_trigger_function_and_ci_start_the_pipeline() -> None:
    allowed = {
        r for r in ROLES if _decision(r, "sagemaker:StartPipelineExecution", PIPELINE) == "allow"
    }
    assert allowed == {"StartFunctionRole", "CiRole"}
    assert "PipelineTriggerRole" not in RESOURCES  # the rules no longer start it themselves


def test_rules_invoke_the_start_function_with_their_own_permission() -> None:
    for rule, permission in (
        ("RetrainScheduleRule", "RetrainScheduleRuleInvokePermission"),
        ("NewDataRule", "NewDataRuleInvokePermission"),
    ):
        (target,) = _props(rule)["Targets"]
        assert target["Arn"] == {"GetAtt": "StartFunction.Arn"} and "RoleArn" not in target
        assert _props(permission) == {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Ref": "StartFunction"},
            "Principal": "events.amazonaws.com",
            "SourceArn": {"GetAtt": f"{rule}.Arn"},
        }
        assert RESOURCES[permission].get("Condition") == RESOURCES[rule].get("Condition")


def test_start_function_is_configured_like_the_deploy_function() -> None:
    start, deploy = _props("StartFunction"), _props("DeployFunction")
    for key in ("Runtime", "KmsKeyArn", "ReservedConcurrentExecutions", "Timeout"):
        assert start[key] == deploy[key], key
    assert start["DeadLetterConfig"] == {"TargetArn": {"GetAtt": "StartDeadLetterQueue.Arn"}}
    assert _props("StartDeadLetterQueue")["KmsMasterKeyId"] == {"Ref": "DataKey"}
    assert start["LoggingConfig"] == {"LogGroup": {"Ref": "StartFunctionLogGroup"}}
    log_group = _props("StartFunctionLogGroup")
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert log_group["KmsKeyId"] == {"GetAtt": "DataKey.Arn"}
    assert start["Environment"]["Variables"] == {
        "PIPELINE_NAME": {"Ref": "PipelineName"},
        "MODEL_PACKAGE_GROUP": {"Ref": "ModelPackageGroupName"},
        "CHAMPION_TOLERANCE": {"Ref": "ChampionTolerance"},
    }
    tolerance = TEMPLATE["Parameters"]["ChampionTolerance"]
    assert float(tolerance["Default"]) == CFG.champion_tolerance  # the CLI's default too
