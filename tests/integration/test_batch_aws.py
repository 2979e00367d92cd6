"""`lepton batch predict` on AWS, against moto (in-process): the processing job it creates is
the definition's Batch step on the project's image, with the approved package's artifact, the
uploaded code bundle, and the prefixes given; its description reads back as sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipelines.aws.batch import start_job, wait_job
from pipelines.batch.job import BatchJobError
from pipelines.definition import names as n
from pipelines.definition.config import aws_default
from pipelines.register import sagemaker as smr
from pipelines.settings import load_settings
from tests.fixtures_aws import moto_account

REGION = "eu-west-1"
ROLE = "arn:aws:iam::123456789012:role/lepton-pipeline"
IMAGE = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/lepton:0123abcd"
BUCKET = "lepton-artifacts-test"


@pytest.fixture()
def clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    with moto_account(monkeypatch, REGION):
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield boto3.client("sagemaker", region_name=REGION), s3


def test_the_job_is_the_batch_step_with_the_approved_model(
    clients: tuple[Any, Any], tmp_path: Path
) -> None:
    sm, s3 = clients
    cfg = aws_default(ROLE, BUCKET, REGION, image_uri=IMAGE)
    settings = load_settings({"LEPTON_STATE_DIR": str(tmp_path)})
    with pytest.raises(BatchJobError, match="no Approved package"):
        start_job(cfg, settings, "s3://in/x/", "s3://out/y/", None, {}, sm=sm, s3=s3)
    smr.ensure_model_package_group(sm, cfg.model_package_group)
    old = smr.register_model_package(
        sm, cfg.model_package_group, "s3://m/1/model.tar.gz", IMAGE, smr.APPROVED
    )
    arn = smr.register_model_package(
        sm, cfg.model_package_group, "s3://m/2/model.tar.gz", IMAGE, smr.APPROVED
    )
    assert old != arn
    lines: list[str] = []
    name = start_job(
        cfg,
        settings,
        "s3://in/x/",
        "s3://out/y/",
        None,
        {"batch_size": 128},
        sm=sm,
        s3=s3,
        out=lines.append,
    )
    job = sm.describe_processing_job(ProcessingJobName=name)
    app = job["AppSpecification"]
    assert app["ImageUri"] == IMAGE
    assert app["ContainerEntrypoint"] == ["python3", "-m", n.BATCH_MODULE]
    argv = app["ContainerArguments"]
    assert "--input=s3://in/x/" in argv and "--output=s3://out/y/" in argv
    assert argv[argv.index("--model-version") + 1] == arn and argv[-1] == "--batch_size=128"
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in job["ProcessingInputs"]}
    assert inputs["model"] == "s3://m/2/model.tar.gz"  # the newest Approved package
    code_bucket, _, code_key = inputs[n.CODE_INPUT].removeprefix("s3://").partition("/")
    listed = s3.list_objects_v2(Bucket=code_bucket, Prefix=code_key + "/pipelines/batch/")
    assert any(o["Key"].endswith("/pipelines/batch/step.py") for o in listed["Contents"])
    assert job["RoleArn"] == ROLE
    assert wait_job(sm, name, out=lines.append, poll_s=0)["ProcessingJobStatus"] == "Completed"

    with pytest.raises(BatchJobError, match="s3:// prefixes"):
        start_job(cfg, settings, "./images", "s3://out/y/", arn, {}, sm=sm, s3=s3)
