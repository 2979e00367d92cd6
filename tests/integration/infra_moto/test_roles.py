"""The deployed IAM roles: S3 access only to this stack's buckets and prefixes, the CI role's
GitHub OIDC trust, requests signed as each assumed role under moto's IAM enforcement, and the
model approver policy that no role has. Condition keys and SageMaker statements are evaluated
with infra/iam_policy.py (moto's IAM enforcement knows neither; see this package's __init__)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from moto.core import set_initial_no_auth_action_count

from infra.iam_policy import allowing_statements, evaluate
from tests.integration.infra_moto.stack import (
    OTHER_BUCKET,
    REGION,
    _account,
    _allowed,
    _assumed_client,
    _function_role,
    _role_docs,
)

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS::")


def _all_roles(aws: dict[str, Any]) -> dict[str, str]:
    out = aws["outputs"]
    roles = {k: v for k, v in out.items() if k.endswith("RoleArn")}
    for function in ("StartFunctionArn", "DeployFunctionArn"):  # their roles are no outputs
        roles[function.replace("Arn", "RoleArn")] = _function_role(aws, function)
    return roles


def test_role_policies_reference_only_this_stacks_buckets(aws: dict[str, Any]) -> None:
    iam, out = aws["client"]("iam"), aws["outputs"]
    ours = (f"arn:aws:s3:::{out['DataBucketName']}", f"arn:aws:s3:::{out['ArtifactBucketName']}")
    for label, arn in _all_roles(aws).items():
        docs = _role_docs(iam, arn)
        for st in allowing_statements(docs, "s3:*"):
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            for resource in resources:
                assert resource != "*", (label, st)
                assert resource.startswith(ours), (label, resource)
        for action in ("s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"):
            for resource in (f"arn:aws:s3:::{OTHER_BUCKET}", f"arn:aws:s3:::{OTHER_BUCKET}/raw/x"):
                assert evaluate(docs, action, resource) == "implicit-deny", (
                    label,
                    action,
                    resource,
                )


def test_execution_role_prefix_scoping(aws: dict[str, Any]) -> None:
    iam, out = aws["client"]("iam"), aws["outputs"]
    docs = _role_docs(iam, out["SageMakerExecutionRoleArn"])
    data, art = out["DataBucketName"], out["ArtifactBucketName"]
    assert evaluate(docs, "s3:GetObject", f"arn:aws:s3:::{data}/raw/cats/1.png") == "allow"
    assert evaluate(docs, "s3:GetObject", f"arn:aws:s3:::{data}/private/1.png") == "implicit-deny"
    assert evaluate(docs, "s3:PutObject", f"arn:aws:s3:::{data}/raw/1.png") == "implicit-deny"
    assert (
        evaluate(docs, "s3:PutObject", f"arn:aws:s3:::{art}/checkpoints/run/last.ckpt") == "allow"
    )
    account = out["KmsKeyArn"].split(":")[4]
    group = f"arn:aws:sagemaker:{REGION}:{account}:model-package/lepton-classifier/3"
    pending = {"sagemaker:ModelApprovalStatus": "PendingManualApproval"}
    assert evaluate(docs, "sagemaker:CreateModelPackage", group, pending) == "allow"
    approved = {"sagemaker:ModelApprovalStatus": "Approved"}
    assert evaluate(docs, "sagemaker:CreateModelPackage", group, approved) == "deny"
    other_group = f"arn:aws:sagemaker:{REGION}:{account}:model-package/other-group/3"
    assert evaluate(docs, "sagemaker:CreateModelPackage", other_group, pending) == "implicit-deny"
    assert evaluate(docs, "kms:Decrypt", out["KmsKeyArn"]) == "allow"
    assert evaluate(docs, "kms:Decrypt", out["KmsKeyArn"][:-4] + "ffff") == "implicit-deny"
    assert evaluate(docs, "iam:PassRole", out["CiRoleArn"]) == "implicit-deny"


def test_assumed_execution_role_cannot_reach_other_buckets(aws: dict[str, Any]) -> None:
    """Real requests under moto's IAM enforcement, signed with the assumed role's credentials."""
    s3, out = aws["client"]("s3"), aws["outputs"]
    role_arn = out["SageMakerExecutionRoleArn"]
    data, art = out["DataBucketName"], out["ArtifactBucketName"]
    s3.create_bucket(Bucket=OTHER_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    for bucket, key in (
        (data, "raw/cat/1.png"),
        (data, "private/1.png"),
        (OTHER_BUCKET, "raw/1.png"),
    ):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    c = _assumed_client(aws, role_arn, "s3")

    @set_initial_no_auth_action_count(0)
    def probe() -> dict[str, bool]:
        calls = {
            "read raw": lambda: c.get_object(Bucket=data, Key="raw/cat/1.png"),
            "list raw": lambda: c.list_objects_v2(Bucket=data, Prefix="raw/"),
            "write artifacts": lambda: c.put_object(Bucket=art, Key="models/m.tar.gz", Body=b"x"),
            "read other data prefix": lambda: c.get_object(Bucket=data, Key="private/1.png"),
            "write data bucket": lambda: c.put_object(Bucket=data, Key="raw/evil.png", Body=b"x"),
            "read other bucket": lambda: c.get_object(Bucket=OTHER_BUCKET, Key="raw/1.png"),
            "list other bucket": lambda: c.list_objects_v2(Bucket=OTHER_BUCKET),
            "write other bucket": lambda: c.put_object(Bucket=OTHER_BUCKET, Key="x", Body=b"x"),
        }
        return _allowed(calls)

    assert probe() == {
        "read raw": True,
        "list raw": True,
        "write artifacts": True,
        "read other data prefix": False,
        "write data bucket": False,
        "read other bucket": False,
        "list other bucket": False,
        "write other bucket": False,
    }


def test_ci_role_trusts_only_the_configured_repo_and_branch(aws: dict[str, Any]) -> None:
    iam, out = aws["client"]("iam"), aws["outputs"]
    role = iam.get_role(RoleName=out["CiRoleArn"].rsplit("/", 1)[1])["Role"]
    trust = role["AssumeRolePolicyDocument"]
    account = out["KmsKeyArn"].split(":")[4]
    provider = f"arn:aws:iam::{account}:oidc-provider/token.actions.githubusercontent.com"
    github = {"Federated": provider}

    def decision(sub: str, aud: str = "sts.amazonaws.com") -> str:
        ctx = {
            "token.actions.githubusercontent.com:sub": sub,
            "token.actions.githubusercontent.com:aud": aud,
        }
        return evaluate(trust, "sts:AssumeRoleWithWebIdentity", out["CiRoleArn"], ctx, github)

    assert decision("repo:acme/lepton:ref:refs/heads/main") == "allow"
    for sub in (
        "repo:acme/lepton:ref:refs/heads/feature",
        "repo:acme/lepton:pull_request",
        "repo:acme/lepton:environment:prod",
        "repo:evil/lepton:ref:refs/heads/main",
        "repo:acme/lepton-fork:ref:refs/heads/main",
        "repo:acme/lepton:ref:refs/tags/v1",
    ):
        assert decision(sub) == "implicit-deny", sub
    assert decision("repo:acme/lepton:ref:refs/heads/main", aud="other") == "implicit-deny"
    # Another identity provider, or plain sts:AssumeRole, gets nothing.
    assert evaluate(trust, "sts:AssumeRole", out["CiRoleArn"], {}, {"AWS": "*"}) == "implicit-deny"


def _put(aws: dict[str, Any], bucket: str, *keys: str) -> None:
    for key in keys:
        aws["client"]("s3").put_object(Bucket=bucket, Key=key, Body=b"x")


def _enforced(calls: dict[str, Any]) -> dict[str, bool]:
    """`_allowed(calls)` with moto's IAM enforcement on for these requests only."""
    return set_initial_no_auth_action_count(0)(_allowed)(calls)


EVALUATION_KEY = "pipeline/executions/0a1b2c3d/Evaluate/evaluation/evaluation.json"
MODEL_KEY = "models/run/output/model.tar.gz"


def test_assumed_ci_role_writes_only_the_code_prefix(aws: dict[str, Any]) -> None:
    """Real requests under moto's IAM enforcement, signed as the CI role."""
    art = aws["outputs"]["ArtifactBucketName"]
    _put(aws, art, EVALUATION_KEY, MODEL_KEY)
    c = _assumed_client(aws, aws["outputs"]["CiRoleArn"], "s3")

    def put(key: str) -> Any:
        return lambda: c.put_object(Bucket=art, Key=key, Body=b"x")

    assert _enforced(
        {
            "write code": put("pipeline/code/0123abcd/sourcedir.tar.gz"),
            "read evaluation": lambda: c.get_object(Bucket=art, Key=EVALUATION_KEY),
            "overwrite model": put(MODEL_KEY),
            "overwrite evaluation": put(EVALUATION_KEY),
            "write dataset": put("pipeline/executions/0a1b2c3d/Prepare/dataset/manifest.json"),
            "write checkpoint": put("checkpoints/run/last.ckpt"),
            "read model": lambda: c.get_object(Bucket=art, Key=MODEL_KEY),
        }
    ) == {
        "write code": True,
        "read evaluation": True,
        "overwrite model": False,
        "overwrite evaluation": False,
        "write dataset": False,
        "write checkpoint": False,
        "read model": False,
    }


def test_assumed_start_function_role_reads_only_evaluations(aws: dict[str, Any]) -> None:
    """Real requests under moto's IAM enforcement, signed as the start function's role."""
    art, data = aws["outputs"]["ArtifactBucketName"], aws["outputs"]["DataBucketName"]
    _put(aws, art, EVALUATION_KEY, MODEL_KEY)
    _put(aws, data, "raw/batch-7/_READY")
    c = _assumed_client(aws, _function_role(aws, "StartFunctionArn"), "s3")
    assert _enforced(
        {
            "read evaluation": lambda: c.get_object(Bucket=art, Key=EVALUATION_KEY),
            "read model": lambda: c.get_object(Bucket=art, Key=MODEL_KEY),
            "read raw data": lambda: c.get_object(Bucket=data, Key="raw/batch-7/_READY"),
            "write evaluation": lambda: c.put_object(Bucket=art, Key=EVALUATION_KEY, Body=b"{}"),
        }
    ) == {
        "read evaluation": True,
        "read model": False,
        "read raw data": False,
        "write evaluation": False,
    }


def test_model_approver_policy_is_attached_to_nobody(aws: dict[str, Any]) -> None:
    iam, out = aws["client"]("iam"), aws["outputs"]
    arn = out["ModelApproverPolicyArn"]
    policy = iam.get_policy(PolicyArn=arn)["Policy"]
    assert policy["AttachmentCount"] == 0
    entities = iam.list_entities_for_policy(PolicyArn=arn)
    assert not (entities["PolicyRoles"] or entities["PolicyUsers"] or entities["PolicyGroups"])
    version = iam.get_policy_version(PolicyArn=arn, VersionId=policy["DefaultVersionId"])
    doc = version["PolicyVersion"]["Document"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    package = (
        f"arn:aws:sagemaker:{REGION}:{_account(aws)}:model-package/{out['ModelPackageGroupName']}/3"
    )
    approved = {"sagemaker:ModelApprovalStatus": "Approved"}
    assert evaluate(doc, "sagemaker:UpdateModelPackage", package, approved) == "allow"
    # Nobody the stack creates can approve: every role, as deployed.
    for label, role in _all_roles(aws).items():
        docs = _role_docs(iam, role)
        assert evaluate(docs, "sagemaker:UpdateModelPackage", package, approved) != "allow", label
