"""What the infra_moto modules share: the stack's name and parameters, and helpers that read
the deployed roles and sign requests as them (see this package's __init__ for moto's gaps)."""

from __future__ import annotations

import ast
import json
from typing import Any

from botocore.exceptions import ClientError

REGION = "eu-west-1"
STACK = "lepton-it"
PARAMS = {"GitHubOwner": "acme", "GitHubRepo": "lepton", "CreateGitHubOidcProvider": "false"}
OTHER_BUCKET = "someone-elses-bucket"


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


def _account(aws: dict[str, Any]) -> str:
    return str(aws["outputs"]["KmsKeyArn"].split(":")[4])


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
