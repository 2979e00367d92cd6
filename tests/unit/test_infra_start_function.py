"""The retraining-trigger function's inline code (template.yaml, StartFunction.Code.ZipFile),
run in-process against moto's SageMaker and S3: the parameters it starts the pipeline with for
a new-data and a schedule event, its idempotency token, and the champion floor.

moto records ClientRequestToken but does not deduplicate on it (SageMaker does): the tests
check that the token reaches the API and is the same for a retried event, not that SageMaker
returns the first execution for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.session import get_session
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemaker.models import sagemaker_backends

from pipelines.aws.pipeline import champion_accuracy, start_parameters
from pipelines.aws.stack import TEMPLATE_PATH, load_template
from pipelines.definition.config import APPROVED, PENDING, REJECTED, PipelineConfig
from pipelines.definition.parameters import BY_NAME
from pipelines.register import sagemaker as smr
from pipelines.settings import load_settings
from tests.unit.test_infra_deploy_function import inline_function

REGION = "us-east-1"
PIPELINE = "lepton"
ARTIFACTS = "lepton-artifacts-test"
IMAGE = f"{DEFAULT_ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/lepton:cpu-0123"
TOLERANCE = float(load_template(TEMPLATE_PATH)["Parameters"]["ChampionTolerance"]["Default"])


def _new_data_event(
    event_id: str = "17793124-05d4-b198-2fde-7ededc63b103",
    key: str = "raw/batch-7/_READY",
    etag: str = "d41d8cd98f00b204e9800998ecf8427e",
    sequencer: str = "0062E99A88DC407460",
) -> dict[str, Any]:
    """An "Object Created" event as S3 sends it to EventBridge (the S3 user guide's example)."""
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": DEFAULT_ACCOUNT_ID,
        "time": "2026-03-02T10:15:07Z",
        "region": REGION,
        "resources": ["arn:aws:s3:::lepton-data-test"],
        "detail": {
            "version": "0",
            "bucket": {"name": "lepton-data-test"},
            "object": {"key": key, "size": 0, "etag": etag, "sequencer": sequencer},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": DEFAULT_ACCOUNT_ID,
            "reason": "PutObject",
        },
    }


def _schedule_event(
    event_id: str = "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", time: str = "2026-03-02T04:23:00Z"
) -> dict[str, Any]:
    """A "Scheduled Event" as an EventBridge schedule rule sends it."""
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": DEFAULT_ACCOUNT_ID,
        "time": time,
        "region": REGION,
        "resources": [
            f"arn:aws:events:{REGION}:{DEFAULT_ACCOUNT_ID}:rule/lepton-RetrainScheduleRule-X"
        ],
        "detail": {},
    }


@pytest.fixture(scope="module")
def _moto() -> Iterator[None]:
    with mock_aws():  # started once: each start resets every backend
        sm = boto3.client("sagemaker", region_name=REGION)
        sm.create_pipeline(
            PipelineName=PIPELINE,
            PipelineDefinition=json.dumps({"Version": "2020-12-01", "Steps": []}),
            RoleArn=f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/exec",
        )
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=ARTIFACTS)
        yield


@pytest.fixture
def aws(
    _moto: None, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """Clients, and a model package group of this test's own (tests share one moto account)."""
    group = "g-" + request.node.name.replace("_", "-").replace("[", "-").rstrip("]")[-60:]
    for key, value in {
        "PIPELINE_NAME": PIPELINE,
        "MODEL_PACKAGE_GROUP": group,
        "CHAMPION_TOLERANCE": str(TOLERANCE),
    }.items():
        monkeypatch.setenv(key, value)
    sm = boto3.client("sagemaker", region_name=REGION)
    smr.ensure_model_package_group(sm, group)
    return {"sm": sm, "s3": boto3.client("s3", region_name=REGION), "group": group}


def _register(aws: dict[str, Any], status: str, evaluation: Any = None) -> str:
    """A package in the test's group; `evaluation` (a dict, or raw bytes) is stored as its
    evaluation.json where the pipeline's Evaluate step writes it."""
    n = len(
        aws["sm"].list_model_packages(ModelPackageGroupName=aws["group"])["ModelPackageSummaryList"]
    )
    uri = None
    if evaluation is not None:
        key = f"pipeline/executions/{aws['group']}-{n}/Evaluate/evaluation/evaluation.json"
        body = evaluation if isinstance(evaluation, bytes) else json.dumps(evaluation).encode()
        aws["s3"].put_object(Bucket=ARTIFACTS, Key=key, Body=body)
        uri = f"s3://{ARTIFACTS}/{key}"
    return smr.register_model_package(
        aws["sm"], aws["group"], f"s3://{ARTIFACTS}/models/{n}/model.tar.gz", IMAGE, status, uri
    )


def _evaluation(accuracy: float) -> dict[str, Any]:
    return {"multiclass_classification_metrics": {"accuracy": {"value": accuracy}}}


def _start(aws: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """Run the handler; return what SageMaker (moto) recorded for the execution it started."""
    result = inline_function("StartFunction").handler(event, None, aws["sm"], aws["s3"])
    arn = result["execution"]
    recorded = aws["sm"].list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)
    execution = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].pipelines[PIPELINE]
    return {
        "result": result,
        "parameters": {p["Name"]: p["Value"] for p in recorded["PipelineParameters"]},
        "token": execution.pipeline_executions[arn].client_request_token,
    }


def test_new_data_event_starts_with_the_marker_as_snapshot(aws: dict[str, Any]) -> None:
    started = _start(aws, _new_data_event())
    assert started["parameters"] == {
        "DataSnapshot": "0062E99A88DC407460.d41d8cd98f00b204e9800998ecf8427e@raw/batch-7/_READY",
        "MinimumChampionAccuracy": "0.0",  # no champion yet
    }
    assert started["token"] == "17793124-05d4-b198-2fde-7ededc63b103"  # the event id
    # What it sends are pipeline parameters of the definition, of their declared types.
    for name, value in started["parameters"].items():
        BY_NAME[name].parse(value)
    # Another upload of the same marker (same key, new sequencer) is new data: a new snapshot.
    again = _start(
        aws, _new_data_event("a3f29c1e-4b7d-4e2a-8f6c-9d0e1b2a3c4d", sequencer="0062E99A88DC407461")
    )
    assert again["parameters"]["DataSnapshot"] != started["parameters"]["DataSnapshot"]


def test_schedule_event_always_retrains(aws: dict[str, Any]) -> None:
    monday = _start(aws, _schedule_event())
    assert monday["parameters"]["DataSnapshot"] == "schedule-2026-03-02T04:23:00Z"
    assert monday["token"] == "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa"
    later = _start(
        aws, _schedule_event("0c7ffe41-8a2e-4e53-9d61-3f3d6c0b9a10", "2026-03-09T04:23:00Z")
    )
    # A new snapshot each week: Prepare (and so Train) is never a cache hit of the last run.
    assert later["parameters"]["DataSnapshot"] != monday["parameters"]["DataSnapshot"]


def test_a_retried_event_sends_the_same_idempotency_token(aws: dict[str, Any]) -> None:
    """EventBridge and Lambda retry an event with its id unchanged; the token is that id, so
    SageMaker answers a retry with the execution the first attempt started."""
    event = _new_data_event("5b3c1d0e-7f4a-4b8e-9c2d-1a0b9e8f7d6c")
    first, retry = _start(aws, event), _start(aws, json.loads(json.dumps(event)))
    assert first["token"] == retry["token"] == event["id"]
    assert first["parameters"] == retry["parameters"]  # same request: SageMaker deduplicates it
    other = _start(aws, _new_data_event("6c4d2e1f-8a5b-4c9f-8d3e-2b1c0f9e8d7e"))
    assert other["token"] != first["token"]


def test_snapshot_fits_a_processing_container_argument(aws: dict[str, Any]) -> None:
    """Prepare gets DataSnapshot as a container argument, which SageMaker caps (256 chars);
    S3 keys run to 1024. The upload's sequencer and etag come first, so a cut keeps them."""
    model = get_session().get_service_model("sagemaker")
    app = model.operation_model("CreateProcessingJob").input_shape.members["AppSpecification"]
    limit = app.members["ContainerArguments"].member.metadata["max"]
    key = "raw/" + "deep/" * 200 + "_READY"
    a = _start(aws, _new_data_event("7d5e3f20-9b6c-4d0a-9e4f-3c2d1a0f9e8f", key=key))
    b = _start(aws, _new_data_event("8e6f4031-ac7d-4e1b-af50-4d3e2b1a0f90", key=key, sequencer="1"))
    snapshots = {a["parameters"]["DataSnapshot"], b["parameters"]["DataSnapshot"]}
    assert len(snapshots) == 2 and all(len(s) <= limit for s in snapshots)


def _floor(aws: dict[str, Any]) -> str:
    return str(_start(aws, _schedule_event())["parameters"]["MinimumChampionAccuracy"])


def _cli_floor(aws: dict[str, Any]) -> str:
    """What `lepton pipeline start` sends for the same registry (pipelines/aws/pipeline.py)."""
    champion = champion_accuracy(aws["group"], load_settings({}), client=aws["sm"], s3=aws["s3"])
    cfg = PipelineConfig(champion_tolerance=TOLERANCE)
    return str(start_parameters(cfg, champion)["MinimumChampionAccuracy"])


def test_champion_floor_is_the_newest_approved_accuracy_minus_the_tolerance(
    aws: dict[str, Any],
) -> None:
    assert TOLERANCE == PipelineConfig().champion_tolerance == 0.005
    _register(aws, PENDING, _evaluation(0.999))  # never approved: not a champion
    assert _floor(aws) == "0.0"
    _register(aws, APPROVED, _evaluation(0.9))  # older champion
    _register(aws, APPROVED, _evaluation(0.985))  # the newest Approved: the champion
    _register(aws, PENDING, _evaluation(0.999))
    _register(aws, REJECTED, _evaluation(1.0))
    assert float(_floor(aws)) == pytest.approx(0.985 - TOLERANCE)
    assert _floor(aws) == _cli_floor(aws)  # the same floor whichever way a run starts


def test_champion_floor_uses_the_stack_tolerance_and_never_goes_below_zero(
    aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(aws, APPROVED, _evaluation(0.004))
    assert _floor(aws) == "0.0"  # 0.004 - 0.005 clamps to 0
    monkeypatch.setenv("CHAMPION_TOLERANCE", "0.0")
    assert _floor(aws) == "0.004"


@pytest.mark.parametrize(
    "evaluation",
    [None, b"{}", {"multiclass_classification_metrics": {"accuracy": {"value": "n/a"}}}],
    ids=["no-metrics", "no-accuracy", "not-a-number"],
)
def test_a_champion_without_a_readable_accuracy_gives_no_floor(
    aws: dict[str, Any], evaluation: Any
) -> None:
    _register(aws, APPROVED, evaluation)
    assert _floor(aws) == "0.0" == _cli_floor(aws)


def test_an_unreadable_evaluation_fails_the_start_instead_of_dropping_the_floor(
    aws: dict[str, Any],
) -> None:
    """Deleted (or, on AWS, denied) evaluation.json: the function raises (Lambda retries, then
    the dead-letter queue) rather than start a run that any model could pass."""
    arn = _register(aws, APPROVED, _evaluation(0.99))
    uri = aws["sm"].describe_model_package(ModelPackageName=arn)["ModelMetrics"]["ModelQuality"][
        "Statistics"
    ]["S3Uri"]
    aws["s3"].delete_object(Bucket=ARTIFACTS, Key=uri.split("/", 3)[3])
    before = aws["sm"].list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]
    with pytest.raises(aws["s3"].exceptions.NoSuchKey):
        inline_function("StartFunction").handler(_schedule_event(), None, aws["sm"], aws["s3"])
    after = aws["sm"].list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]
    assert len(after) == len(before)
