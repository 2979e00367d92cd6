"""infra/template.yaml deployed into moto's CloudFormation (in-process), then inspected.

What moto's CloudFormation does and does not do (moto 5.2), and how each gap is covered:
- Not created at all (moto warns and skips): AWS::S3::BucketPolicy, AWS::IAM::OIDCProvider,
  AWS::SageMaker::ModelPackageGroup, AWS::SageMaker::MlflowTrackingServer. Bucket policies are
  resolved with moto's own intrinsic-function resolver against the deployed stack, applied with
  PutBucketPolicy and evaluated; the OIDC trust is tested with the provider ARN built from
  pseudo parameters (CreateGitHubOidcProvider=false); the other two are checked statically
  (tests/unit/test_infra_template.py).
- MLflow on (EnableMlflowTrackingServer=true) cannot be deployed: moto fails on the Output's
  GetAtt of the unsupported tracking server; cfn-lint checks that branch.
- AWS::S3::Bucket applies only BucketEncryption and Tags (versioning, public access block,
  lifecycle, logging, notifications are ignored): those are checked on the template.
- AWS::IAM::Role inline `Policies` come back from GetRolePolicy as Python repr, not JSON; they
  are parsed with ast.literal_eval and re-put as JSON so moto's IAM enforcement can read them.
- moto enforces identity policies once `set_initial_no_auth_action_count` is active (used for
  "the role cannot reach other buckets"), but knows few condition keys: aws:SecureTransport is
  never in its request context, so the TLS deny is evaluated with infra/iam_policy.py instead.
- EventBridge TestEventPattern is not implemented: each deployed rule's (resolved) pattern is
  copied onto a probe bus with an SQS target, and events are put there.
- AWS::CodeBuild::Project is not created either, so the ImageBuildProjectName output is absent
  (tests/integration/test_image_build.py creates the project through CodeBuild's API) and a
  `${ImageBuildProject}` inside a Sub stays unresolved (the builder policy's test puts the
  project's Name there, as CloudFormation would); the project's role is created and checked here.
- AWS::Lambda::Function drops KmsKeyArn and DeadLetterConfig (checked on the template; the
  dead-letter queues are created) and hands a Number parameter into Environment as a number.
- moto's IAM enforcement authorizes SageMaker requests against resource "*" and fills no
  condition keys (sagemaker:ModelApprovalStatus, s3:prefix), so scoped SageMaker statements
  never match there: what the roles may do in SageMaker, and with condition keys, is evaluated
  with infra/iam_policy.py (here on the deployed documents, and in test_infra_template.py);
  S3 object access is probed for real, signed as each role.
- AWS::ECR::Repository keeps its name and tag immutability but drops ImageScanningConfiguration
  and EncryptionConfiguration (moto reads the template's keys as API keys) and LifecyclePolicy:
  the first two are checked on the template; the lifecycle policy is resolved and put through
  ECR's API, which validates it.
"""

from __future__ import annotations

import ast
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count

from infra.iam_policy import allowing_statements, evaluate
from pipelines.aws.stack import TEMPLATE_PATH, deploy_stack

REGION = "eu-west-1"
STACK = "lepton-it"
PARAMS = {"GitHubOwner": "acme", "GitHubRepo": "lepton", "CreateGitHubOidcProvider": "false"}
KNOWN_UNSUPPORTED = {
    "AWS::S3::BucketPolicy",
    "AWS::IAM::OIDCProvider",
    "AWS::SageMaker::ModelPackageGroup",
    "AWS::SageMaker::MlflowTrackingServer",
    "AWS::CodeBuild::Project",
}
OTHER_BUCKET = "someone-elses-bucket"
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS::")


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One moto account with the stack deployed; yields outputs and a client factory."""
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name=REGION)
        logging.getLogger("moto").setLevel(logging.ERROR)  # one "No Moto support" line per skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = deploy_stack(STACK, cfn, parameters=PARAMS, poll_seconds=0)
        unsupported = {
            str(w.message).split("parse ")[1].split(" but")[0]
            for w in caught
            if "not supported by moto" in str(w.message)
        }
        yield {
            "outputs": result.outputs,
            "result": result,
            "unsupported": unsupported,
            "client": lambda name, **kw: boto3.client(name, region_name=REGION, **kw),
        }


def _role_docs(iam: Any, role_arn: str) -> list[dict[str, Any]]:
    name = role_arn.rsplit("/", 1)[1]
    docs = []
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
        docs.append(ast.literal_eval(doc) if isinstance(doc, str) else doc)
    return docs


def _function_role(aws: dict[str, Any], function_output: str) -> str:
    fn = aws["client"]("lambda").get_function(FunctionName=aws["outputs"][function_output])
    return str(fn["Configuration"]["Role"])


def _all_roles(aws: dict[str, Any]) -> dict[str, str]:
    out = aws["outputs"]
    roles = {k: v for k, v in out.items() if k.endswith("RoleArn")}
    for function in ("StartFunctionArn", "DeployFunctionArn"):  # their roles are no outputs
        roles[function.replace("Arn", "RoleArn")] = _function_role(aws, function)
    return roles


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


def _assumed_client(aws: dict[str, Any], role_arn: str, service: str) -> Any:
    """A client signed with the role's assumed credentials; its inline policies re-put as JSON
    first (repr -> JSON, see the top) so moto's IAM enforcement can read them."""
    iam = aws["client"]("iam")
    name = role_arn.rsplit("/", 1)[1]
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
        doc = ast.literal_eval(doc) if isinstance(doc, str) else doc
        iam.put_role_policy(RoleName=name, PolicyName=policy, PolicyDocument=json.dumps(doc))
    creds = aws["client"]("sts").assume_role(RoleArn=role_arn, RoleSessionName="probe")[
        "Credentials"
    ]
    return aws["client"](
        service,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def _allowed(calls: dict[str, Any]) -> dict[str, bool]:
    """Run each call; True if it went through, False if IAM refused it."""
    allowed = {}
    for label, call in calls.items():
        try:
            call()
            allowed[label] = True
        except ClientError as err:
            assert err.response["Error"]["Code"] == "AccessDenied", err
            allowed[label] = False
    return allowed


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


def test_template_path_is_the_repo_template() -> None:
    assert TEMPLATE_PATH.name == "template.yaml" and TEMPLATE_PATH.parent.name == "infra"


# ---------------------------------------------------------------- container image
def _account(aws: dict[str, Any]) -> str:
    return str(aws["outputs"]["KmsKeyArn"].split(":")[4])


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
