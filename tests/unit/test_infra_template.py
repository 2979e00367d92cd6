"""Static checks of infra/template.yaml: cfn-lint, and the properties moto's CloudFormation
ignores (versioning, public access block, lifecycle, logging, notifications) or cannot create
(bucket policies, the OIDC provider, the model package group, the MLflow tracking server)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra.iam_policy import allowing_statements, evaluate, statements
from pipelines.aws.image import STACK_OUTPUTS, UNSET
from pipelines.aws.image_context import BUILD_PREFIX, CONTEXT_FILES, FLAVOURS
from pipelines.aws.stack import (
    OUTPUT_ENV,
    TEMPLATE_BODY_MAX_BYTES,
    TEMPLATE_PATH,
    load_template,
    validate_template,
)
from pipelines.definition import names as n
from pipelines.definition.build import _code_prefix
from pipelines.definition.config import APPROVED, PENDING, REJECTED, PipelineConfig

TEMPLATE = load_template(TEMPLATE_PATH)
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
BUCKETS = [k for k, v in RESOURCES.items() if v["Type"] == "AWS::S3::Bucket"]
KMS_BUCKETS = ["DataBucket", "ArtifactBucket"]


def _props(logical_id: str) -> dict[str, Any]:
    return RESOURCES[logical_id]["Properties"]


def _of_type(type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in RESOURCES.items() if v["Type"] == type_}


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


@pytest.mark.parametrize("logical_id", BUCKETS)
def test_bucket_hardening(logical_id: str) -> None:
    props = _props(logical_id)
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    default = rule["ServerSideEncryptionByDefault"]
    if logical_id in KMS_BUCKETS:
        assert default == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"GetAtt": "DataKey.Arn"}}
        assert rule["BucketKeyEnabled"] is True
        assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogsBucket"}
    else:  # the access-log bucket: S3 server access logging only delivers to SSE-S3
        assert default == {"SSEAlgorithm": "AES256"}
    lifecycle = props["LifecycleConfiguration"]["Rules"]
    assert all(r["Status"] == "Enabled" for r in lifecycle)
    assert any("NoncurrentVersionExpiration" in r for r in lifecycle)
    assert all("AbortIncompleteMultipartUpload" in r for r in lifecycle)
    assert RESOURCES[logical_id]["DeletionPolicy"] == "Retain"


def test_checkpoints_expire() -> None:
    rules = {r["Id"]: r for r in _props("ArtifactBucket")["LifecycleConfiguration"]["Rules"]}
    checkpoints = rules["ExpireCheckpoints"]
    assert checkpoints["Prefix"] == "checkpoints/"
    assert checkpoints["ExpirationInDays"] == {"Ref": "CheckpointRetentionDays"}
    assert checkpoints["NoncurrentVersionExpiration"]["NoncurrentDays"] == 1


def test_data_bucket_sends_events_to_eventbridge() -> None:
    assert _props("DataBucket")["NotificationConfiguration"]["EventBridgeConfiguration"] == {
        "EventBridgeEnabled": True
    }


def test_every_bucket_has_a_tls_only_policy() -> None:
    policies = {
        v["Properties"]["Bucket"]["Ref"]: v["Properties"]["PolicyDocument"]
        for v in _of_type("AWS::S3::BucketPolicy").values()
    }
    assert set(policies) == set(BUCKETS)
    for bucket, doc in policies.items():
        deny = [s for s in doc["Statement"] if s.get("Sid") == "DenyInsecureTransport"]
        assert len(deny) == 1, bucket
        (st,) = deny
        assert st["Effect"] == "Deny" and st["Principal"] == "*" and st["Action"] == "s3:*"
        assert st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert st["Resource"] == [{"GetAtt": f"{bucket}.Arn"}, {"Sub": f"${{{bucket}.Arn}}/*"}]


def test_key_rotation_and_key_policy() -> None:
    key = _props("DataKey")
    assert key["EnableKeyRotation"] is True
    for st in key["KeyPolicy"]["Statement"]:
        assert st["Principal"] != "*" and st["Principal"] != {"AWS": "*"}


def _iam_documents() -> dict[str, list[dict[str, Any]]]:
    docs: dict[str, list[dict[str, Any]]] = {}
    for logical_id, res in RESOURCES.items():
        if res["Type"] == "AWS::IAM::Role":
            docs[logical_id] = [p["PolicyDocument"] for p in res["Properties"].get("Policies", [])]
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            docs[logical_id] = [res["Properties"]["PolicyDocument"]]
    return docs


# Actions that IAM only accepts with Resource "*" (no resource types), all read-only or scoped
# by a condition.
STAR_RESOURCE_ALLOWED = {
    "ecr:GetAuthorizationToken",
    "cloudwatch:PutMetricData",
    "sagemaker:ListModelPackages",
}


@pytest.mark.parametrize("logical_id", sorted(_iam_documents()))
def test_iam_policies_avoid_wildcards(logical_id: str) -> None:
    for st in statements(_iam_documents()[logical_id]):
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        assert "*" not in actions and "NotAction" not in st and "NotResource" not in st, st
        for action in actions:
            service, _, name = action.partition(":")
            assert name != "*" or service == "sagemaker-mlflow", st  # mlflow: one server only
        if st.get("Resource") == "*" and st["Effect"] == "Allow":  # a Deny may cover all
            assert set(actions) <= STAR_RESOURCE_ALLOWED, st
        if any(a.startswith("s3:") for a in actions):
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            assert "*" not in resources, st


def test_pass_role_only_to_sagemaker_and_only_the_execution_role() -> None:
    for logical_id, docs in _iam_documents().items():
        for st in statements(docs):
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            if "iam:PassRole" in actions:
                assert st["Resource"] == {"GetAtt": "SageMakerExecutionRole.Arn"}, logical_id
                assert st["Condition"] == {
                    "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
                }


def test_service_trust_policies_pin_the_source_account() -> None:
    for logical_id, res in _of_type("AWS::IAM::Role").items():
        for st in res["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
            if "Service" in st["Principal"]:
                assert st["Condition"] == {
                    "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
                }, logical_id


def _sub(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], template)


def test_ci_role_trust_is_one_repo_and_branch() -> None:
    (st,) = _props("CiRole")["AssumeRolePolicyDocument"]["Statement"]
    assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert set(st["Condition"]) == {"StringEquals"}, (
        "no StringLike: wildcards would admit other refs"
    )
    cond = st["Condition"]["StringEquals"]
    params = {"GitHubOwner": "acme", "GitHubRepo": "lepton", "GitHubBranch": "main"}
    doc = {
        "Statement": [
            {
                **st,
                "Condition": {
                    "StringEquals": {
                        "token.actions.githubusercontent.com:aud": cond[
                            "token.actions.githubusercontent.com:aud"
                        ],
                        "token.actions.githubusercontent.com:sub": _sub(
                            cond["token.actions.githubusercontent.com:sub"]["Sub"], params
                        ),
                    }
                },
            }
        ]
    }

    def decision(sub: str) -> str:
        ctx = {
            "token.actions.githubusercontent.com:sub": sub,
            "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
        }
        return evaluate(
            doc, "sts:AssumeRoleWithWebIdentity", "arn:aws:iam::111122223333:role/ci", ctx
        )

    assert decision("repo:acme/lepton:ref:refs/heads/main") == "allow"
    assert decision("repo:acme/lepton:pull_request") == "implicit-deny"
    assert decision("repo:acme/lepton:ref:refs/heads/main-evil") == "implicit-deny"


def test_oidc_provider_is_github_for_sts() -> None:
    provider = RESOURCES["GitHubOidcProvider"]
    assert provider["Condition"] == "CreateOidcProvider"
    assert provider["Properties"]["Url"] == "https://token.actions.githubusercontent.com"
    assert provider["Properties"]["ClientIdList"] == ["sts.amazonaws.com"]


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


# ---------------------------------------------------------------- container image
def test_image_repository_is_immutable_scanned_encrypted_and_pruned() -> None:
    repository = RESOURCES["ImageRepository"]
    props = repository["Properties"]
    assert props["ImageTagMutability"] == "IMMUTABLE"  # tags are content-addressed
    assert props["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert props["EncryptionConfiguration"] == {
        "EncryptionType": "KMS",
        "KmsKey": {"GetAtt": "DataKey.Arn"},
    }
    assert repository["DeletionPolicy"] == "Retain"
    text = _sub(
        props["LifecyclePolicy"]["LifecyclePolicyText"]["Sub"], {"ImageRetentionCount": "7"}
    )
    rules = json.loads(text)["rules"]
    assert sorted(r["rulePriority"] for r in rules) == list(range(1, len(rules) + 1))
    assert all(r["action"] == {"type": "expire"} for r in rules)
    untagged = [r["selection"] for r in rules if r["selection"]["tagStatus"] == "untagged"]
    assert untagged == [
        {
            "tagStatus": "untagged",
            "countType": "sinceImagePushed",
            "countUnit": "days",
            "countNumber": 1,
        }
    ]
    kept = {
        prefix: r["selection"]["countNumber"]
        for r in rules
        for prefix in r["selection"].get("tagPrefixList", [])
    }
    assert kept == {f"{flavour}-": 7 for flavour in FLAVOURS}  # every flavour's tags, no other


def test_image_build_project_builds_the_uploaded_context() -> None:
    props = _props("ImageBuildProject")
    env = props["Environment"]
    assert env["PrivilegedMode"] is True  # docker build needs the daemon
    assert env["ComputeType"] == {"Ref": "ImageBuildComputeType"}
    assert props["ServiceRole"] == {"GetAtt": "ImageBuildRole.Arn"}
    assert props["EncryptionKey"] == {"GetAtt": "DataKey.Arn"}
    assert props["Source"] == {
        "Type": "S3",
        "Location": {"Sub": f"${{ArtifactBucket}}/{BUILD_PREFIX}"},
        "BuildSpec": "buildspec.yml",
    }
    assert "buildspec.yml" in CONTEXT_FILES
    assert props["Artifacts"] == {"Type": "NO_ARTIFACTS"}
    assert {v["Name"]: v["Value"] for v in env["EnvironmentVariables"]} == {
        "REPOSITORY_URI": {"GetAtt": "ImageRepository.RepositoryUri"},
        "IMAGE_PARAMETER": {"Ref": "ImageUriParameter"},
    }
    assert props["LogsConfig"]["CloudWatchLogs"] == {
        "Status": "ENABLED",
        "GroupName": {"Ref": "ImageBuildLogGroup"},
    }
    log_group = _props("ImageBuildLogGroup")
    assert log_group["KmsKeyId"] == {"GetAtt": "DataKey.Arn"}
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_image_build_role_reads_only_the_build_contexts() -> None:
    (policy,) = _props("ImageBuildRole")["Policies"]
    by_sid = {st["Sid"]: st for st in statements(policy["PolicyDocument"])}
    assert by_sid["ReadBuildContexts"]["Resource"] == {
        "Sub": f"${{ArtifactBucket.Arn}}/{BUILD_PREFIX}*"
    }
    assert by_sid["ReadBuildContexts"]["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    assert by_sid["PushToThisRepository"]["Resource"] == {"GetAtt": "ImageRepository.Arn"}
    assert "log-group:${ImageBuildLogGroup}:*" in by_sid["WriteOwnLogs"]["Resource"]["Sub"]
    assert by_sid["RecordImageUri"]["Action"] == "ssm:PutParameter"
    assert "${ImageUriParameter}" in by_sid["RecordImageUri"]["Resource"]["Sub"]


def test_image_uri_parameter_and_outputs() -> None:
    props = _props("ImageUriParameter")
    assert (props["Type"], props["Value"]) == ("String", UNSET)  # resolve_image_uri: not built yet
    outputs = TEMPLATE["Outputs"]
    assert set(STACK_OUTPUTS) <= set(outputs)
    assert outputs["ImageParameterName"]["Value"] == {"Ref": "ImageUriParameter"}
    assert OUTPUT_ENV["ImageParameterName"] == "LEPTON_IMAGE_PARAMETER"


def _resolve(value: Any, values: dict[str, str]) -> Any:
    """`value` with every `{"Sub": "...${X}..."}`, `{"Ref": X}` and `{"GetAtt": X}` in it
    resolved from `values` (X like "AWS::Region", "PipelineName" or "DataKey.Arn")."""
    if isinstance(value, dict):
        if set(value) == {"Sub"} and isinstance(value["Sub"], str):
            return _sub(value["Sub"], values)
        if set(value) in ({"Ref"}, {"GetAtt"}):
            return values[next(iter(value.values()))]
        return {k: _resolve(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, values) for v in value]
    return value


def test_key_policy_lets_logs_encrypt_the_image_build_log() -> None:
    values = {
        "AWS::Partition": "aws",
        "AWS::Region": "eu-west-1",
        "AWS::AccountId": "111122223333",
        "AWS::StackName": "lepton",
    }
    doc = _resolve(_props("DataKey")["KeyPolicy"], values)
    group = _sub(_props("ImageBuildLogGroup")["LogGroupName"]["Sub"], values)
    lambda_group = _sub(_props("DeployFunctionLogGroup")["LogGroupName"]["Sub"], values)
    start_group = _sub(_props("StartFunctionLogGroup")["LogGroupName"]["Sub"], values)
    logs = {"Service": "logs.eu-west-1.amazonaws.com"}

    def decision(log_group: str) -> str:
        arn = f"arn:aws:logs:eu-west-1:111122223333:log-group:{log_group}"
        ctx = {"kms:EncryptionContext:aws:logs:arn": arn}
        return evaluate(doc, "kms:GenerateDataKey", "*", ctx, logs)

    assert decision(group) == "allow"
    assert decision(lambda_group) == "allow"  # the deploy function's, as before
    assert decision(start_group) == "allow"  # and the retraining trigger's
    assert decision("/aws/codebuild/other-stack-image") == "implicit-deny"


# ---------------------------------------------------------------- triggers and approval
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
