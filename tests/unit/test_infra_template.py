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

from infra.iam_policy import evaluate, statements
from pipelines.aws.image import STACK_OUTPUTS, UNSET
from pipelines.aws.image_context import BUILD_PREFIX, CONTEXT_FILES, FLAVOURS
from pipelines.aws.stack import OUTPUT_ENV, TEMPLATE_PATH, load_template, validate_template

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
        if st.get("Resource") == "*":
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


def _resolve_subs(value: Any, values: dict[str, str]) -> Any:
    """`{"Sub": "...${X}..."}` anywhere in `value`, with X taken from `values`."""
    if isinstance(value, dict):
        if set(value) == {"Sub"} and isinstance(value["Sub"], str):
            return _sub(value["Sub"], values)
        return {k: _resolve_subs(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_subs(v, values) for v in value]
    return value


def test_key_policy_lets_logs_encrypt_the_image_build_log() -> None:
    values = {
        "AWS::Partition": "aws",
        "AWS::Region": "eu-west-1",
        "AWS::AccountId": "111122223333",
        "AWS::StackName": "lepton",
    }
    doc = _resolve_subs(_props("DataKey")["KeyPolicy"], values)
    group = _sub(_props("ImageBuildLogGroup")["LogGroupName"]["Sub"], values)
    lambda_group = _sub(_props("DeployFunctionLogGroup")["LogGroupName"]["Sub"], values)
    logs = {"Service": "logs.eu-west-1.amazonaws.com"}

    def decision(log_group: str) -> str:
        arn = f"arn:aws:logs:eu-west-1:111122223333:log-group:{log_group}"
        ctx = {"kms:EncryptionContext:aws:logs:arn": arn}
        return evaluate(doc, "kms:GenerateDataKey", "*", ctx, logs)

    assert decision(group) == "allow"
    assert decision(lambda_group) == "allow"  # the deploy function's, as before
    assert decision("/aws/codebuild/other-stack-image") == "implicit-deny"


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
