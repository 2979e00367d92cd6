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

from pipelines.deploy import messages
from pipelines.deploy import sagemaker as deploy_sagemaker
from pipelines.deploy import step as deploy
from pipelines.register import sagemaker as smr
from tests.fixtures_aws import moto_account

REGION = "us-east-1"
GROUP = "lepton-classifier"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5-cpu-py311"


@pytest.fixture()
def sm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with moto_account(monkeypatch, REGION):
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


def test_the_deploy_step_reports_and_deploys_nothing_on_aws(
    sm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """On AWS an approval deploys (the stack's approval rule and DeployFunction; IAM denies the
    pipeline's role any endpoint change): the step says so for every status."""
    smr.ensure_model_package_group(sm, GROUP)
    pending, rejected = _package(sm, 1), _package(sm, 2, smr.REJECTED)
    approved = _package(sm, 3, smr.APPROVED)
    assert deploy_sagemaker.report_sagemaker(sm, pending, "lepton-ep") == smr.PENDING
    assert messages.PENDING_MESSAGE in capsys.readouterr().out
    assert deploy_sagemaker.report_sagemaker(sm, rejected, "lepton-ep") == smr.REJECTED
    assert messages.REJECTED_MESSAGE in capsys.readouterr().out
    assert deploy_sagemaker.report_sagemaker(sm, approved, "lepton-ep") == smr.APPROVED
    assert "approval rule deploys it" in capsys.readouterr().out
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []


def test_deploy_main_with_an_arn(sm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    smr.ensure_model_package_group(sm, GROUP)
    pending = _package(sm, 1)
    assert deploy.main(["--model-package-arn", pending, "--endpoint-name", "ep"]) == 0
    assert messages.PENDING_MESSAGE in capsys.readouterr().out
    approved = _package(sm, 2, smr.APPROVED)
    assert deploy.main(["--model-package-arn", approved, "--endpoint-name", "ep"]) == 0
    assert "approval rule deploys it" in capsys.readouterr().out
    assert sm.list_endpoints()["Endpoints"] == []
    assert deploy.main(["--model-package-arn", "nonsense"]) == 2
