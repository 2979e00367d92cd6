"""Static checks of infra/template.yaml's container-image resources, the properties moto's
CloudFormation drops or cannot create: the ECR repository (immutable, scanned, encrypted,
pruned), the CodeBuild project and its role, the image URI parameter and outputs, and the key
policy that lets CloudWatch Logs encrypt the build's (and the functions') log groups."""

from __future__ import annotations

import json

from infra.iam_policy import evaluate, statements
from pipelines.aws.image import STACK_OUTPUTS, UNSET
from pipelines.aws.image_context import BUILD_PREFIX, CONTEXT_FILES, FLAVOURS
from pipelines.aws.stack import OUTPUT_ENV
from tests.unit.infra_template import RESOURCES, TEMPLATE, _props, _resolve, _sub


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
