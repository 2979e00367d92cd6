"""Static checks of infra/template.yaml's IAM: no wildcards, PassRole only of the execution role
to SageMaker, service trusts pinned to the account, the CI role's trust of one repository and
branch, and the GitHub OIDC provider (which moto's CloudFormation cannot create)."""

from __future__ import annotations

from typing import Any

import pytest

from infra.iam_policy import evaluate, statements
from tests.unit.infra_template import RESOURCES, _of_type, _props, _sub


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
