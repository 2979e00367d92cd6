"""The deployed container-image resources: the ECR repository and its lifecycle policy (put
through ECR's API, which validates it), the image URI parameter and build log group, the
CodeBuild role and the image builder policy, and the CI role's access to the image URI.

moto's CloudFormation does not create AWS::CodeBuild::Project, so the ImageBuildProjectName
output is absent (tests/integration/test_image_build.py creates the project through CodeBuild's
API) and a `${ImageBuildProject}` inside a Sub stays unresolved; the project's role is created
and checked here. More on moto's gaps in this package's __init__."""

from __future__ import annotations

import json
from typing import Any

import pytest
from moto.core import set_initial_no_auth_action_count

from infra.iam_policy import evaluate
from tests.integration.infra_moto.stack import (
    REGION,
    STACK,
    _account,
    _allowed,
    _assumed_client,
    _role_docs,
)

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS::")


def _repository(aws: dict[str, Any]) -> dict[str, Any]:
    name = aws["outputs"]["ImageRepositoryUri"].split("/", 1)[1]
    (repo,) = aws["client"]("ecr").describe_repositories(repositoryNames=[name])["repositories"]
    return dict(repo)


def test_image_resources_exist(aws: dict[str, Any]) -> None:
    out = aws["outputs"]
    repo = _repository(aws)
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["repositoryName"].startswith(f"{out['PipelineName']}-")  # lower case, per stack
    parameter = aws["client"]("ssm").get_parameter(Name=out["ImageParameterName"])["Parameter"]
    assert parameter["Name"] == f"/{STACK}/image-uri" and parameter["Value"] == "unset"
    (group,) = aws["client"]("logs").describe_log_groups(
        logGroupNamePrefix=out["ImageBuildLogGroupName"]
    )["logGroups"]
    assert group["logGroupName"] == f"/aws/codebuild/{STACK}-image"
    assert group["retentionInDays"] == 365
    assert "ImageBuildProjectName" not in out  # moto skips the project (see the top)


def test_image_lifecycle_policy_is_valid(aws: dict[str, Any]) -> None:
    from moto.cloudformation import cloudformation_backends
    from moto.cloudformation.parsing import clean_json
    from moto.core import DEFAULT_ACCOUNT_ID

    backend = cloudformation_backends[DEFAULT_ACCOUNT_ID][REGION]
    stack = next(s for s in backend.stacks.values() if s.name == STACK)
    props = stack.template_dict["Resources"]["ImageRepository"]["Properties"]
    text = clean_json(props["LifecyclePolicy"]["LifecyclePolicyText"], stack.resource_map)
    ecr, name = aws["client"]("ecr"), _repository(aws)["repositoryName"]
    ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=text)  # ECR validates it
    rules = json.loads(ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"])[
        "rules"
    ]
    assert [r["selection"].get("tagPrefixList") for r in rules] == [None, ["gpu-"], ["cpu-"]]
    assert rules[1]["selection"]["countNumber"] == 20


def test_image_build_role_is_least_privilege(aws: dict[str, Any]) -> None:
    iam, out = aws["client"]("iam"), aws["outputs"]
    docs = _role_docs(iam, out["ImageBuildRoleArn"])
    art, data, account = out["ArtifactBucketName"], out["DataBucketName"], _account(aws)
    repo = _repository(aws)["repositoryArn"]
    parameter = f"arn:aws:ssm:{REGION}:{account}:parameter{out['ImageParameterName']}"
    own_log = f"arn:aws:logs:{REGION}:{account}:log-group:{out['ImageBuildLogGroupName']}"
    allowed = [
        ("s3:GetObject", f"arn:aws:s3:::{art}/image-build/0123abcd.zip"),
        ("s3:GetBucketLocation", f"arn:aws:s3:::{art}"),
        ("ecr:GetAuthorizationToken", "*"),
        ("ecr:PutImage", repo),
        ("ecr:InitiateLayerUpload", repo),
        ("ecr:DescribeImages", repo),
        ("ssm:PutParameter", parameter),
        ("logs:PutLogEvents", f"{own_log}:log-stream:0f1e2d3c"),
        ("kms:Decrypt", out["KmsKeyArn"]),
    ]
    refused = [
        ("s3:GetObject", f"arn:aws:s3:::{art}/models/run/model.tar.gz"),
        ("s3:GetObject", f"arn:aws:s3:::{art}/image-build-other/x.zip"),
        ("s3:GetObject", f"arn:aws:s3:::{data}/raw/cat/1.png"),
        ("s3:PutObject", f"arn:aws:s3:::{art}/image-build/0123abcd.zip"),
        ("ecr:PutImage", repo.rsplit("/", 1)[0] + "/someone-elses-repo"),
        ("ecr:DeleteRepository", repo),
        ("ecr:BatchDeleteImage", repo),
        ("ssm:PutParameter", parameter.replace("image-uri", "other")),
        ("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{account}:parameter/prod/secret"),
        (
            "logs:PutLogEvents",
            f"arn:aws:logs:{REGION}:{account}:log-group:/aws/lambda/x:log-stream:y",
        ),
        ("kms:Decrypt", out["KmsKeyArn"][:-4] + "ffff"),
        ("iam:PassRole", out["SageMakerExecutionRoleArn"]),
        ("codebuild:StartBuild", f"arn:aws:codebuild:{REGION}:{account}:project/{STACK}-image"),
    ]
    for action, resource in allowed:
        assert evaluate(docs, action, resource) == "allow", (action, resource)
    for action, resource in refused:
        assert evaluate(docs, action, resource) == "implicit-deny", (action, resource)
    trust = iam.get_role(RoleName=out["ImageBuildRoleArn"].rsplit("/", 1)[1])["Role"]
    (st,) = trust["AssumeRolePolicyDocument"]["Statement"]
    assert st["Principal"] == {"Service": "codebuild.amazonaws.com"}


def test_assumed_image_build_role_reads_only_build_contexts(aws: dict[str, Any]) -> None:
    """Real requests under moto's IAM enforcement, signed as the CodeBuild role."""
    s3, out = aws["client"]("s3"), aws["outputs"]
    art, data = out["ArtifactBucketName"], out["DataBucketName"]
    for bucket, key in (
        (art, "image-build/ctx.zip"),
        (art, "models/m.tar.gz"),
        (data, "raw/c/1.png"),
    ):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    c = _assumed_client(aws, out["ImageBuildRoleArn"], "s3")

    @set_initial_no_auth_action_count(0)
    def probe() -> dict[str, bool]:
        return _allowed(
            {
                "read context": lambda: c.get_object(Bucket=art, Key="image-build/ctx.zip"),
                "read model": lambda: c.get_object(Bucket=art, Key="models/m.tar.gz"),
                "read raw data": lambda: c.get_object(Bucket=data, Key="raw/c/1.png"),
                "write context": lambda: c.put_object(Bucket=art, Key="image-build/y", Body=b"x"),
            }
        )

    assert probe() == {
        "read context": True,
        "read model": False,
        "read raw data": False,
        "write context": False,
    }


def test_image_builder_policy_is_what_the_cli_needs(aws: dict[str, Any]) -> None:
    iam, out = aws["client"]("iam"), aws["outputs"]
    arn = out["ImageBuilderPolicyArn"]
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    doc = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    text = doc if isinstance(doc, str) else json.dumps(doc)
    # moto leaves `${ImageBuildProject}` (a Ref to the type it skips) unresolved; CloudFormation
    # puts the project's Name there.
    assert "project/${ImageBuildProject}" in text
    doc = json.loads(text.replace("${ImageBuildProject}", f"{STACK}-image"))
    art, account = out["ArtifactBucketName"], _account(aws)
    project = f"arn:aws:codebuild:{REGION}:{account}:project/{STACK}-image"
    parameter = f"arn:aws:ssm:{REGION}:{account}:parameter{out['ImageParameterName']}"
    stack_id = aws["client"]("cloudformation").describe_stacks(StackName=STACK)["Stacks"][0]
    log = f"arn:aws:logs:{REGION}:{account}:log-group:{out['ImageBuildLogGroupName']}"
    for action, resource in (
        ("cloudformation:DescribeStacks", stack_id["StackId"]),
        ("s3:PutObject", f"arn:aws:s3:::{art}/image-build/abc.zip"),
        ("codebuild:StartBuild", project),
        ("codebuild:BatchGetBuilds", project),
        ("logs:GetLogEvents", f"{log}:log-stream:abc"),
        ("ecr:DescribeImages", _repository(aws)["repositoryArn"]),
        ("ssm:PutParameter", parameter),
        ("ssm:GetParameter", parameter),
    ):
        assert evaluate(doc, action, resource) == "allow", (action, resource)
    for action, resource in (
        ("codebuild:StartBuild", project.replace(f"{STACK}-image", "other")),
        ("codebuild:UpdateProject", project),
        ("s3:PutObject", f"arn:aws:s3:::{art}/models/m.tar.gz"),
        ("ssm:PutParameter", parameter.replace("image-uri", "x")),
    ):
        assert evaluate(doc, action, resource) == "implicit-deny", (action, resource)


def test_ci_role_reads_the_image_uri_but_cannot_change_it(aws: dict[str, Any]) -> None:
    out = aws["outputs"]
    docs = _role_docs(aws["client"]("iam"), out["CiRoleArn"])
    parameter = f"arn:aws:ssm:{REGION}:{_account(aws)}:parameter{out['ImageParameterName']}"
    assert evaluate(docs, "ssm:GetParameter", parameter) == "allow"
    assert evaluate(docs, "ssm:PutParameter", parameter) == "implicit-deny"
    assert evaluate(docs, "codebuild:StartBuild", "*") == "implicit-deny"
