"""Preflight's account checks against moto (in-process `mock_aws`): role and its trust policy,
buckets, the input data prefix, ECR images in this account, the model package group.

Not covered by moto: IAM policy *conditions* in the trust policy (preflight does not evaluate
them either), S3's 403 for a bucket owned by another account, ECR repository policies for
cross-account pulls, and the credential chain's instance-metadata lookup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipelines.aws.preflight import FAILED, OK, SKIPPED, Check, passed, preflight
from pipelines.definition.build import build_definition
from pipelines.definition.config import PipelineConfig, aws_default
from pipelines.settings import Settings

moto = pytest.importorskip("moto")

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
ROLE_NAME = "lepton-pipeline"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"
ARTIFACTS, DATA, GROUP = "lepton-pf-artifacts", "lepton-pf-data", "lepton-pf-classifier"
INPUT = f"s3://{DATA}/raw/mnist-5k"
IMAGE_REPO = "lepton-image"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{IMAGE_REPO}:1"
SAGEMAKER_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "sagemaker.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


@pytest.fixture(scope="module")
def cfg() -> PipelineConfig:
    # every container runs the project image, in this account's ECR
    return aws_default(
        ROLE, ARTIFACTS, REGION, input_data_uri=INPUT, model_package_group=GROUP, image_uri=IMAGE
    )


@pytest.fixture(scope="module")
def definition(
    cfg: PipelineConfig, project_source: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    return build_definition(cfg, project_source, tmp_path_factory.mktemp("staging")).parsed()


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """A moto account holding everything the pipeline needs."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with moto.mock_aws():
        boto3.client("iam").create_role(
            RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(SAGEMAKER_TRUST)
        )
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in (ARTIFACTS, DATA):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=DATA, Key="raw/mnist-5k/0/a.png", Body=b"png")
        boto3.client("sagemaker", region_name=REGION).create_model_package_group(
            ModelPackageGroupName=GROUP
        )
        ecr = boto3.client("ecr", region_name=REGION)
        ecr.create_repository(repositoryName=IMAGE_REPO)
        ecr.put_image(repositoryName=IMAGE_REPO, imageManifest=_manifest(), imageTag="1")
        yield Settings(
            mode="aws",
            region=REGION,
            state_dir=tmp_path / "state",
            artifact_bucket=ARTIFACTS,
            data_bucket=DATA,
        )


def _manifest() -> str:
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1}
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {**config, "digest": "sha256:" + "a" * 64},
            "layers": [],
        }
    )


def _online(cfg: PipelineConfig, definition: dict[str, Any], settings: Settings) -> list[Check]:
    return preflight(cfg, definition, settings, offline=None)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _failed(checks: list[Check]) -> list[str]:
    return [c.line() for c in checks if c.status == FAILED]


def test_everything_in_place_is_all_ok(
    account: Settings, cfg: PipelineConfig, definition: dict[str, Any]
) -> None:
    checks = _online(cfg, definition, account)
    assert passed(checks), _failed(checks)
    got = _by_name(checks)
    for name in (
        f"execution role {ROLE_NAME}",
        f"artifact bucket {ARTIFACTS}",
        f"data bucket {DATA}",
        f"input data {INPUT}",
        f"image {IMAGE}",
        f"model package group {GROUP}",
    ):
        assert got[name].status == OK, got[name]
    assert got[f"execution role {ROLE_NAME}"].detail == "exists, trusted by sagemaker.amazonaws.com"
    # the stock images are SageMaker's own: not checked in this account
    stock = replace(cfg, image_uri=None, stock_images=True)
    built = build_definition(stock, staging_root=account.state_dir / "stock").parsed()
    dlc = [c for c in _online(stock, built, account) if c.name.startswith("image 763104351884.")]
    assert len(dlc) == 3  # processing, training (GPU) and inference
    assert all(c.status == SKIPPED and "AWS-owned image" in c.detail for c in dlc)


def test_missing_role_fails_with_its_name(
    account: Settings, cfg: PipelineConfig, definition: dict[str, Any]
) -> None:
    boto3.client("iam").delete_role(RoleName=ROLE_NAME)
    checks = _online(cfg, definition, account)
    assert _failed(checks) == [
        f"execution role {ROLE_NAME}: FAILED: role {ROLE_NAME} does not exist ({ROLE}); the "
        "stack creates it (`lepton infra deploy`) and `lepton infra outputs` names it"
    ]


def test_role_that_sagemaker_cannot_assume_fails(
    account: Settings, cfg: PipelineConfig, definition: dict[str, Any]
) -> None:
    lambda_only = json.loads(json.dumps(SAGEMAKER_TRUST))
    lambda_only["Statement"][0]["Principal"]["Service"] = "lambda.amazonaws.com"
    boto3.client("iam").update_assume_role_policy(
        RoleName=ROLE_NAME, PolicyDocument=json.dumps(lambda_only)
    )
    failed = _failed(_online(cfg, definition, account))
    assert failed == [
        f"execution role {ROLE_NAME}: FAILED: role {ROLE_NAME} cannot be assumed by "
        "sagemaker.amazonaws.com: its trust policy has no Allow of sts:AssumeRole for that service"
    ]


MISSING = "does not exist (`lepton infra deploy` creates it)"
ELSEWHERE: dict[str, tuple[dict[str, str], list[str]]] = {
    "artifact bucket": (
        {"bucket": "lepton-pf-nowhere"},
        [f"artifact bucket lepton-pf-nowhere: FAILED: bucket lepton-pf-nowhere {MISSING}"],
    ),
    "data bucket": (
        {"input_data_uri": "s3://lepton-pf-gone/raw/x"},
        [
            f"data bucket lepton-pf-gone: FAILED: bucket lepton-pf-gone {MISSING}",
            "input data s3://lepton-pf-gone/raw/x: FAILED: cannot list s3://lepton-pf-gone/raw/x",
        ],
    ),
    "empty data prefix": (
        {"input_data_uri": f"s3://{DATA}/raw/mnist"},  # a prefix of the real one: no objects
        [
            f"input data s3://{DATA}/raw/mnist: FAILED: no objects under s3://{DATA}/raw/mnist; "
            f"upload images first, e.g. `LEPTON_MODE=aws lepton data import mnist-5k "
            f"s3://{DATA}/raw/mnist`"
        ],
    ),
    "model package group": (  # moto cannot delete a group: name one that was never created
        {"model_package_group": "lepton-pf-other"},
        [
            "model package group lepton-pf-other: FAILED: it does not exist, and the Register "
            "step needs it: `lepton infra deploy` creates it (stack parameter "
            "ModelPackageGroupName=lepton-pf-other)"
        ],
    ),
}


@pytest.mark.parametrize("case", ELSEWHERE)
def test_config_naming_what_is_missing_fails(
    account: Settings, cfg: PipelineConfig, definition: dict[str, Any], case: str
) -> None:
    changes, expected = ELSEWHERE[case]
    failed = _failed(_online(replace(cfg, **changes), definition, account))
    assert len(failed) == len(expected), failed
    for line, prefix in zip(failed, expected, strict=True):
        assert line.startswith(prefix), (line, prefix)


def test_missing_image_fails(
    account: Settings, cfg: PipelineConfig, definition: dict[str, Any]
) -> None:
    ecr = boto3.client("ecr", region_name=REGION)
    ecr.batch_delete_image(repositoryName=IMAGE_REPO, imageIds=[{"imageTag": "1"}])
    assert _failed(_online(cfg, definition, account)) == [
        f"image {IMAGE}: FAILED: repository {IMAGE_REPO} has no image 1"
    ]
    ecr.delete_repository(repositoryName=IMAGE_REPO)
    assert _failed(_online(cfg, definition, account)) == [
        f"image {IMAGE}: FAILED: repository {IMAGE_REPO} does not exist in account {ACCOUNT} "
        f"({REGION})"
    ]


def test_cli_online(
    account: Settings,
    project_source: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`lepton pipeline preflight` in AWS mode with credentials: online, exit 0; one role
    deleted: exit 1."""
    from pipelines.cli import main
    from pipelines.definition import build

    monkeypatch.setattr(build, "SOURCE_ROOT", project_source)
    for key, value in {
        "LEPTON_MODE": "aws",
        "LEPTON_STATE_DIR": str(account.state_dir),
        "LEPTON_ARTIFACT_BUCKET": ARTIFACTS,
        "LEPTON_SAGEMAKER_ROLE_ARN": ROLE,
        "LEPTON_MODEL_NAME": GROUP,
        "LEPTON_RAW_DATA_URI": INPUT,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    argv = ["pipeline", "preflight", "--image-uri", IMAGE]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"preflight of pipeline lepton (setup aws; online, region {REGION})"
    assert f"model package group {GROUP}: ok" in out and out[-1] == "preflight passed"
    boto3.client("iam").delete_role(RoleName=ROLE_NAME)
    assert main(argv) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "1 check(s) failed"
