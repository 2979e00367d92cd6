"""infra/iam_policy.py, the small IAM evaluator the infra tests use as their oracle."""

from __future__ import annotations

import pytest

from infra.iam_policy import allowing_statements, evaluate

BUCKET = "arn:aws:s3:::data"
DOC = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:Get*", "s3:ListBucket"],
            "Resource": [BUCKET, f"{BUCKET}/raw/*"],
        },
        {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": f"{BUCKET}/*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "arn:aws:kms:*:1:key/?bc"},
    ],
}


@pytest.mark.parametrize(
    ("action", "resource", "context", "expected"),
    [
        ("s3:GetObject", f"{BUCKET}/raw/a.png", {}, "allow"),
        ("S3:getobject", f"{BUCKET}/raw/a.png", {}, "allow"),  # actions are case-insensitive
        ("s3:GetObject", "arn:aws:s3:::DATA/raw/a.png", {}, "implicit-deny"),  # resources are not
        ("s3:GetObject", f"{BUCKET}/other/a.png", {}, "implicit-deny"),
        ("s3:GetObject", "arn:aws:s3:::data-copy/raw/a.png", {}, "implicit-deny"),
        ("s3:PutObject", f"{BUCKET}/raw/a.png", {}, "implicit-deny"),
        (
            "s3:GetObject",
            f"{BUCKET}/raw/a.png",
            {"aws:SecureTransport": "false"},
            "deny",
        ),  # deny wins
        ("s3:GetObject", f"{BUCKET}/raw/a.png", {"aws:SecureTransport": "true"}, "allow"),
        ("kms:Decrypt", "arn:aws:kms:eu-west-1:1:key/abc", {}, "allow"),
        ("kms:Decrypt", "arn:aws:kms:eu-west-1:1:key/abcd", {}, "implicit-deny"),  # ? is one char
    ],
)
def test_decisions(action: str, resource: str, context: dict[str, str], expected: str) -> None:
    assert evaluate(DOC, action, resource, context) == expected


def test_missing_condition_keys_and_negated_operators() -> None:
    doc = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "a:b",
                "Resource": "*",
                "Condition": {"StringNotEquals": {"k": "x"}, "StringEqualsIfExists": {"m": "y"}},
            }
        ]
    }
    assert evaluate(doc, "a:b", "r") == "allow"  # both keys missing: negated and IfExists pass
    assert evaluate(doc, "a:b", "r", {"k": "x"}) == "implicit-deny"
    assert evaluate(doc, "a:b", "r", {"m": "z"}) == "implicit-deny"
    positive = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "a:b",
                "Resource": "*",
                "Condition": {"StringLike": {"k": "repo:o/r:*"}},
            }
        ]
    }
    assert evaluate(positive, "a:b", "r") == "implicit-deny"
    assert evaluate(positive, "a:b", "r", {"k": "repo:o/r:ref:refs/heads/x"}) == "allow"


def test_not_action_principal_and_unknown_operator() -> None:
    doc = {
        "Statement": [
            {
                "Effect": "Allow",
                "NotAction": "iam:*",
                "Resource": "*",
                "Principal": {"Service": "sagemaker.amazonaws.com"},
            }
        ]
    }
    assert (
        evaluate(doc, "s3:GetObject", "x", principal={"Service": "sagemaker.amazonaws.com"})
        == "allow"
    )
    assert evaluate(doc, "iam:PassRole", "x") == "implicit-deny"
    assert (
        evaluate(doc, "s3:GetObject", "x", principal={"Service": "lambda.amazonaws.com"})
        == "implicit-deny"
    )
    odd = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "*",
                "Resource": "*",
                "Condition": {"IpAddress": {"a": "b"}},
            }
        ]
    }
    with pytest.raises(ValueError, match="IpAddress"):
        evaluate(odd, "s3:GetObject", "x")


def test_allowing_statements_finds_wildcards() -> None:
    docs = [DOC, {"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}]
    found = allowing_statements(docs, "s3:*")
    assert [s["Action"] for s in found] == [["s3:Get*", "s3:ListBucket"], "*"]
    assert allowing_statements(DOC, "kms:*")[0]["Action"] == "kms:Decrypt"
