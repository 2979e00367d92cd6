"""The deployed stack: every output, only known resource types skipped by moto, buckets
encrypted with the stack's key (rotated), TLS-only bucket policies (resolved against the stack,
put through S3's API), and the template the deploy uses. See this package's __init__ for what
moto's CloudFormation does not do and how each gap is covered."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.iam_policy import allowing_statements, evaluate
from pipelines.aws.stack import TEMPLATE_PATH
from tests.integration.infra_moto.stack import REGION, STACK

KNOWN_UNSUPPORTED = {
    "AWS::S3::BucketPolicy",
    "AWS::IAM::OIDCProvider",
    "AWS::SageMaker::ModelPackageGroup",
    "AWS::SageMaker::MlflowTrackingServer",
    "AWS::CodeBuild::Project",
}
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS::")


def test_stack_created_with_every_output(aws: dict[str, Any]) -> None:
    assert aws["result"].action == "created"
    expected = {
        "DataBucketName",
        "ArtifactBucketName",
        "AccessLogsBucketName",
        "RawDataUri",
        "NewDataMarker",
        "KmsKeyArn",
        "SageMakerExecutionRoleArn",
        "CiRoleArn",
        "StartFunctionArn",
        "DeployFunctionArn",
        "ModelApproverPolicyArn",
        "ModelPackageGroupName",
        "PipelineName",
        "EndpointName",
    }
    assert expected <= set(aws["outputs"])
    assert "MlflowTrackingServerArn" not in aws["outputs"]  # off by default
    assert aws["outputs"]["RawDataUri"] == f"s3://{aws['outputs']['DataBucketName']}/raw/"
    assert aws["outputs"]["KmsKeyArn"].startswith(f"arn:aws:kms:{REGION}:")


def test_only_known_resource_types_were_skipped_by_moto(aws: dict[str, Any]) -> None:
    # If moto learns a type, this still passes; a new unsupported type must be looked at.
    assert aws["unsupported"] <= KNOWN_UNSUPPORTED, aws["unsupported"]


def test_buckets_exist_encrypted_with_the_stack_key(aws: dict[str, Any]) -> None:
    s3, out = aws["client"]("s3"), aws["outputs"]
    for bucket in (out["DataBucketName"], out["ArtifactBucketName"]):
        rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"][
            "Rules"
        ][0]
        default = rule["ApplyServerSideEncryptionByDefault"]
        assert default["SSEAlgorithm"] == "aws:kms"
        assert default["KMSMasterKeyID"] == out["KmsKeyArn"]
    logs = s3.get_bucket_encryption(Bucket=out["AccessLogsBucketName"])
    # S3 server access logging can only write to SSE-S3 buckets.
    assert (
        logs["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"][
            "SSEAlgorithm"
        ]
        == "AES256"
    )


def test_key_rotation_is_on(aws: dict[str, Any]) -> None:
    kms = aws["client"]("kms")
    assert kms.get_key_rotation_status(KeyId=aws["outputs"]["KmsKeyArn"])["KeyRotationEnabled"]


def _resolved_bucket_policy(logical_id: str) -> dict[str, Any]:
    """The template's policy document with Ref/GetAtt/Sub resolved by moto against the stack."""
    from moto.cloudformation import cloudformation_backends
    from moto.cloudformation.parsing import clean_json
    from moto.core import DEFAULT_ACCOUNT_ID

    backend = cloudformation_backends[DEFAULT_ACCOUNT_ID][REGION]
    stack = next(s for s in backend.stacks.values() if s.name == STACK)
    resource = stack.template_dict["Resources"][logical_id]
    return clean_json(resource["Properties"]["PolicyDocument"], stack.resource_map)


@pytest.mark.parametrize(
    ("policy_id", "bucket_output"),
    [
        ("DataBucketPolicy", "DataBucketName"),
        ("ArtifactBucketPolicy", "ArtifactBucketName"),
        ("AccessLogsBucketPolicy", "AccessLogsBucketName"),
    ],
)
def test_bucket_policy_refuses_plain_http(
    aws: dict[str, Any], policy_id: str, bucket_output: str
) -> None:
    bucket = aws["outputs"][bucket_output]
    doc = _resolved_bucket_policy(policy_id)
    s3 = aws["client"]("s3")
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(doc))  # S3's API accepts it
    try:
        stored = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    finally:
        # moto evaluates bucket policies on object requests without aws:SecureTransport in the
        # request context (and treats an unmet condition as Deny), so left in place this policy
        # would refuse every object request in the other tests.
        s3.delete_bucket_policy(Bucket=bucket)
    anyone = {"AWS": "arn:aws:iam::111122223333:root"}
    for action, resource in (
        ("s3:GetObject", f"arn:aws:s3:::{bucket}/raw/x.png"),
        ("s3:PutObject", f"arn:aws:s3:::{bucket}/any"),
        ("s3:ListBucket", f"arn:aws:s3:::{bucket}"),
    ):
        insecure = evaluate(stored, action, resource, {"aws:SecureTransport": "false"}, anyone)
        secure = evaluate(stored, action, resource, {"aws:SecureTransport": "true"}, anyone)
        assert insecure == "deny", (action, resource)
        assert secure != "deny", (action, resource)
    # The policy never grants anything to everyone.
    assert all(st.get("Principal") != "*" for st in allowing_statements(stored, "*"))


def test_template_path_is_the_repo_template() -> None:
    assert TEMPLATE_PATH.name == "template.yaml" and TEMPLATE_PATH.parent.name == "infra"
