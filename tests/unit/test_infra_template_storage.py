"""Static checks of infra/template.yaml's storage, the properties moto's CloudFormation ignores
or cannot create: bucket hardening (versioning, public access block, encryption, lifecycle,
logging), checkpoint expiry, EventBridge notifications, TLS-only bucket policies, and the KMS
key's rotation and key policy."""

from __future__ import annotations

import pytest

from tests.unit.infra_template import BUCKETS, RESOURCES, _of_type, _props

KMS_BUCKETS = ["DataBucket", "ArtifactBucket"]


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
