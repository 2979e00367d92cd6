"""The AWS side of the registry and the deploy step's AWS path, against moto (in-process).

What moto 5.2 supports and how the gaps are covered: model package groups, packages,
UpdateModelPackage (approval), ListModelPackages (filter and sort), CreateModel from a model
package, endpoint configs and CreateEndpoint are real moto calls. UpdateEndpoint is not
implemented by moto, so the "endpoint already exists" path runs on a thin wrapper that records
the UpdateEndpoint call and forwards every other call to moto.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from pipelines.deploy import messages
from pipelines.deploy import sagemaker as deploy_sagemaker
from pipelines.deploy import step as deploy
from pipelines.register import sagemaker as smr

REGION = "us-east-1"
GROUP = "lepton-classifier"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5-cpu-py311"
ROLE = "arn:aws:iam::123456789012:role/lepton-sagemaker"


@pytest.fixture()
def sm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", REGION),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield boto3.client("sagemaker", region_name=REGION)


def _package(sm: Any, n: int, status: str = smr.PENDING) -> str:
    return smr.register_model_package(
        sm,
        GROUP,
        f"s3://artifacts/models/{n}/model.tar.gz",
        IMAGE,
        status,
        evaluation_s3_uri=f"s3://artifacts/eval/{n}/evaluation.json",
        customer_metadata={"pipeline_execution": f"exec-{n}"},
    )


def test_group_is_created_once(sm: Any) -> None:
    arn = smr.ensure_model_package_group(sm, GROUP)
    assert arn.endswith(f":model-package-group/{GROUP}")
    assert smr.ensure_model_package_group(sm, GROUP) == arn
    assert len(sm.list_model_package_groups()["ModelPackageGroupSummaryList"]) == 1


def test_register_defaults_to_pending_and_records_evaluation(sm: Any) -> None:
    smr.ensure_model_package_group(sm, GROUP)
    arn = _package(sm, 1)
    described = sm.describe_model_package(ModelPackageName=arn)
    assert described["ModelApprovalStatus"] == smr.PENDING
    assert described["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"].endswith(
        "/1/evaluation.json"
    )
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["Image"] == IMAGE and container["ModelDataUrl"].endswith("1/model.tar.gz")
    assert "image/png" in described["InferenceSpecification"]["SupportedContentTypes"]
    with pytest.raises(ValueError, match="approval status"):
        smr.register_model_package(sm, GROUP, "s3://a/b.tar.gz", IMAGE, "Maybe")


def test_latest_approved_follows_approvals(sm: Any) -> None:
    smr.ensure_model_package_group(sm, GROUP)
    first, second, third = (_package(sm, n) for n in (1, 2, 3))
    assert smr.latest_approved(sm, GROUP) is None
    smr.set_approval(sm, first, smr.APPROVED)
    assert smr.latest_approved(sm, GROUP) == first
    smr.set_approval(sm, third, smr.APPROVED)
    smr.set_approval(sm, second, smr.REJECTED)
    assert smr.latest_approved(sm, GROUP) == third
    smr.set_approval(sm, third, smr.REJECTED)
    assert smr.latest_approved(sm, GROUP) == first
    assert smr.approval_status(sm, second) == smr.REJECTED


def _deploy(client: Any, arn: str) -> str | None:
    return deploy_sagemaker.deploy_sagemaker(
        client, arn, "lepton-ep", "ml.m5.large", 1, ROLE, out=lambda _m: None
    )


def test_deploy_only_approved_packages(sm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    smr.ensure_model_package_group(sm, GROUP)
    pending, rejected = _package(sm, 1), _package(sm, 2, smr.REJECTED)
    assert (
        deploy_sagemaker.deploy_sagemaker(sm, pending, "lepton-ep", "ml.m5.large", 1, ROLE) is None
    )
    assert messages.PENDING_MESSAGE in capsys.readouterr().out
    assert (
        deploy_sagemaker.deploy_sagemaker(sm, rejected, "lepton-ep", "ml.m5.large", 1, ROLE) is None
    )
    assert messages.REJECTED_MESSAGE in capsys.readouterr().out
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []


def test_deploy_creates_then_updates_endpoint(sm: Any) -> None:
    smr.ensure_model_package_group(sm, GROUP)
    first = _package(sm, 1, smr.APPROVED)
    assert _deploy(sm, first) == "lepton-ep"
    endpoint = sm.describe_endpoint(EndpointName="lepton-ep")
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 1
    model = sm.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["ModelPackageName"] == first
    assert model["ExecutionRoleArn"] == ROLE

    class Recording:  # moto has no UpdateEndpoint
        def __init__(self, inner: Any) -> None:
            self.inner, self.updates = inner, []

        def update_endpoint(self, **kwargs: Any) -> None:
            self.updates.append(kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    second = _package(sm, 2, smr.APPROVED)
    recording = Recording(sm)
    assert _deploy(recording, second) == "lepton-ep"
    (update,) = recording.updates
    assert update["EndpointName"] == "lepton-ep"
    new_config = sm.describe_endpoint_config(EndpointConfigName=update["EndpointConfigName"])
    new_model = sm.describe_model(ModelName=new_config["ProductionVariants"][0]["ModelName"])
    assert new_model["PrimaryContainer"]["ModelPackageName"] == second


def test_deploy_main_with_an_arn(sm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    smr.ensure_model_package_group(sm, GROUP)
    pending = _package(sm, 1)
    assert deploy.main(["--model-package-arn", pending, "--endpoint-name", "ep"]) == 0
    assert messages.PENDING_MESSAGE in capsys.readouterr().out
    approved = _package(sm, 2, smr.APPROVED)
    assert deploy.main(["--model-package-arn", approved, "--endpoint-name", "ep"]) == 1
    assert "--role-arn" in capsys.readouterr().err
    assert (
        deploy.main(["--model-package-arn", approved, "--endpoint-name", "ep", "--role-arn", ROLE])
        == 0
    )
    assert sm.describe_endpoint(EndpointName="ep")["EndpointStatus"] == "InService"
    assert deploy.main(["--model-package-arn", "nonsense"]) == 2
