"""`pipelines.aws.pipeline` against moto (in-process): upsert uploads the code bundle and creates, then
updates, the pipeline; start/wait/status; the champion's accuracy for the gate.

moto marks every execution Succeeded at once and does not implement
ListPipelineExecutionSteps, so step-level status is covered only by its shape (empty list)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipelines.aws import pipeline as aws
from pipelines.aws.stack import OUTPUT_ENV, settings_env
from pipelines.definition.config import PipelineConfig, aws_default, aws_from_settings
from pipelines.imports import SOURCE_ROOT as REPO_ROOT
from pipelines.runner.record import RunRecord
from pipelines.settings import Settings, load_settings

moto = pytest.importorskip("moto")

REGION = "us-east-1"
BUCKET = "lepton-test-artifacts"
ROLE = "arn:aws:iam::123456789012:role/lepton-pipeline"
IMAGE = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/lepton:gpu-0123456789abcdef"


@pytest.fixture(scope="module")
def source_root(project_source: Path) -> Path:
    return project_source


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_SAGEMAKER",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with moto.mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield Settings(
            mode="aws", region=REGION, state_dir=tmp_path / "state", artifact_bucket=BUCKET
        )


def _keys(prefix: str = "") -> list[str]:
    s3 = boto3.client("s3", region_name=REGION)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_upsert_start_wait_status(
    env: Settings,
    source_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = aws_default(None, BUCKET, REGION, pipeline_name="lepton-it", epochs=3, image_uri=IMAGE)
    with pytest.raises(ValueError, match="execution role"):
        aws.upsert(cfg, env, source_root=source_root)

    arn = aws.upsert(cfg, env, role_arn=ROLE, source_root=source_root)
    assert arn.endswith(":pipeline/lepton-it")
    described = aws.describe("lepton-it", settings=env)
    assert described["role_arn"] == ROLE
    definition = described["definition"]
    assert {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}["Epochs"] == 3
    # every code URI the definition references was uploaded
    code_keys = _keys(f"{cfg.prefix}/code/")
    referenced = {u.split(f"s3://{BUCKET}/", 1)[1] for u in _code_uris(definition)}
    assert referenced and all(any(k.startswith(r) for k in code_keys) for r in referenced)
    assert any(k.endswith("/pipelines/prepare/step.py") for k in code_keys)
    assert any(k.endswith("/sm_train.sh") for k in code_keys)

    # second upsert, through the CLI (`lepton pipeline upsert`): updates in place, and
    # unchanged code is not uploaded again
    from pipelines.cli import main
    from pipelines.definition import build

    monkeypatch.setattr(build, "SOURCE_ROOT", source_root)
    monkeypatch.setenv("LEPTON_MODE", "aws")
    monkeypatch.setenv("LEPTON_ARTIFACT_BUCKET", BUCKET)
    monkeypatch.setenv("LEPTON_STATE_DIR", str(env.state_dir))
    monkeypatch.setenv("LEPTON_DEBUG", "1")  # raise instead of printing one line
    monkeypatch.setenv("LEPTON_IMAGE_URI", IMAGE)  # as `lepton image build` leaves it
    before = len(code_keys)
    assert (
        main(
            [
                "pipeline",
                "upsert",
                "--role-arn",
                ROLE,
                "--pipeline-name",
                "lepton-it",
                "--epochs",
                "5",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == arn
    assert len(_keys(f"{cfg.prefix}/code/")) == before
    defaults = {
        p["Name"]: p["DefaultValue"]
        for p in aws.describe("lepton-it", settings=env)["definition"]["Parameters"]
    }
    assert defaults["Epochs"] == 5

    assert aws.status("lepton-it", settings=env)["status"] is None  # never run
    execution = aws.start(
        "lepton-it", {"Epochs": 2, "MinimumChampionAccuracy": 0.9}, display_name="it", settings=env
    )
    assert aws.is_execution_arn(execution)
    seen: list[str] = []
    assert (
        aws.wait(execution, timeout_s=5, poll_s=0.01, settings=env, on_poll=seen.append)
        == "Succeeded"
    )
    assert seen == ["Succeeded"]
    for target in ("lepton-it", execution):
        info = aws.status(target, settings=env)
        assert info["execution_arn"] == execution and info["status"] == "Succeeded"
        assert info["pipeline_name"] == "lepton-it" and info["steps"] == []
    sm = boto3.client("sagemaker", region_name=REGION)
    params = sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=execution)
    assert {p["Name"]: p["Value"] for p in params["PipelineParameters"]} == {
        "Epochs": "2",
        "MinimumChampionAccuracy": "0.9",
    }

    # the same through the CLI; it names the data snapshot from the input's listing
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="lepton-data")
    s3.put_object(Bucket="lepton-data", Key="raw/mnist-5k/0/a.png", Body=b"x")
    assert (
        main(["pipeline", "start", "--pipeline-name", "lepton-it", "--param", "Epochs=1", "--wait"])
        == 0
    )
    cli_arn, final = capsys.readouterr().out.splitlines()
    assert aws.is_execution_arn(cli_arn) and final.startswith("Succeeded")
    sent = sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=cli_arn)
    snapshot = {p["Name"]: p["Value"] for p in sent["PipelineParameters"]}["DataSnapshot"]
    assert snapshot == aws.data_snapshot("s3://lepton-data/raw/mnist-5k", env)
    s3.put_object(Bucket="lepton-data", Key="raw/mnist-5k/0/b.png", Body=b"y")
    assert aws.data_snapshot("s3://lepton-data/raw/mnist-5k", env) != snapshot  # new data
    record = RunRecord.read(env.state_dir)  # what the CI job summary reads
    assert record is not None and (record.where, record.execution_id) == ("aws", cli_arn)
    assert record.status == "Succeeded" and "## Retraining: Succeeded" in record.markdown()
    assert main(["pipeline", "wait", cli_arn, "--poll", "0.01"]) == 0
    assert main(["pipeline", "status", cli_arn, "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["execution_arn"] == cli_arn and info["status"] == "Succeeded"


def _code_uris(obj: Any) -> set[str]:
    return set(re.findall(r'"(s3://[^"]*/code/[^"]*)"', json.dumps(obj)))


def test_champion_accuracy_and_start_parameters(env: Settings) -> None:
    cfg = PipelineConfig(champion_tolerance=0.01, model_package_group="lepton-it")
    assert aws.champion_accuracy("lepton-it", env) is None  # no group yet
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_model_package_group(ModelPackageGroupName="lepton-it")
    assert aws.champion_accuracy("lepton-it", env) is None  # no approved package
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=BUCKET,
        Key="ev/evaluation.json",
        Body=json.dumps({"multiclass_classification_metrics": {"accuracy": {"value": 0.975}}}),
    )
    sm.create_model_package(
        ModelPackageGroupName="lepton-it",
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [{"Image": "img", "ModelDataUrl": f"s3://{BUCKET}/m/model.tar.gz"}],
            "SupportedContentTypes": ["image/png"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        ModelMetrics={
            "ModelQuality": {
                "Statistics": {
                    "ContentType": "application/json",
                    "S3Uri": f"s3://{BUCKET}/ev/evaluation.json",
                }
            }
        },
    )
    champion = aws.champion_accuracy("lepton-it", env)
    assert champion == pytest.approx(0.975)
    params = aws.start_parameters(cfg, champion, {"Epochs": 1})
    assert params == {"MinimumChampionAccuracy": pytest.approx(0.965), "Epochs": 1}
    assert aws.start_parameters(cfg, None) == {"MinimumChampionAccuracy": 0.0}


def test_config_from_stack_outputs() -> None:
    """Stack outputs reach the AWS config through the settings (the one map, OUTPUT_ENV); the
    output names are infra/template.yaml's."""
    template = (REPO_ROOT / "infra" / "template.yaml").read_text()
    outputs = template[template.index("\nOutputs:") :]
    for key in OUTPUT_ENV:
        assert f"\n  {key}:" in outputs, key
    env = settings_env(
        {
            "SageMakerExecutionRoleArn": ROLE,
            "ArtifactBucketName": "from-stack",
            "PipelineName": "lepton-prod",
            "RawDataUri": "s3://d/raw",
            "Unrelated": "x",
        }
    )
    cfg = aws_from_settings(load_settings(env))
    assert (cfg.role_arn, cfg.bucket, cfg.pipeline_name, cfg.input_data_uri) == (
        ROLE,
        "from-stack",
        "lepton-prod",
        "s3://d/raw",
    )
    assert aws_from_settings(load_settings({})) == aws_default(None, "lepton-artifacts", REGION)
