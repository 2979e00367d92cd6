"""The deploy-on-approval function's inline code (template.yaml, DeployFunction.Code.ZipFile),
run in-process against moto's SageMaker. moto has no UpdateEndpoint, so that one call is
recorded by a thin wrapper instead."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from pipelines.aws.stack import TEMPLATE_PATH, load_template

REGION = "us-east-1"
ENV = {
    "ENDPOINT_NAME": "lepton-classifier",
    "MODEL_PACKAGE_GROUP": "lepton-classifier",
    "EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/exec",
    "INSTANCE_TYPE": "ml.m5.large",
    "INSTANCE_COUNT": "1",
    "KMS_KEY_ARN": "arn:aws:kms:us-east-1:123456789012:key/abc",
    "CAPTURE_PERCENT": "0",
    "CAPTURE_URI": "s3://artifacts/capture",
}


def inline_function(logical_id: str) -> types.ModuleType:
    """The inline code (ZipFile) of the template's function `logical_id`, as module `index`."""
    code = load_template(TEMPLATE_PATH)["Resources"][logical_id]["Properties"]["Code"]["ZipFile"]
    assert len(code) < 4096, "inline Lambda code (ZipFile) is limited to 4 KB"
    module = types.ModuleType("index")
    exec(compile(code, "index.py", "exec"), module.__dict__)  # noqa: S102 - our own template
    return module


def _handler_module() -> types.ModuleType:
    return inline_function("DeployFunction")


class _SageMaker:
    """moto's client, plus UpdateEndpoint (not implemented by moto) recorded as a call."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.exceptions = client.exceptions
        self.updates: list[dict[str, str]] = []
        self.endpoint_config: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        found = self._client.describe_endpoint(EndpointName=EndpointName)
        if EndpointName in self.endpoint_config:
            found["EndpointConfigName"] = self.endpoint_config[EndpointName]
        return found

    def update_endpoint(self, EndpointName: str, EndpointConfigName: str) -> dict[str, Any]:  # noqa: N803
        self.updates.append(
            {"EndpointName": EndpointName, "EndpointConfigName": EndpointConfigName}
        )
        self.endpoint_config[EndpointName] = EndpointConfigName
        return {}


@pytest.fixture(scope="module")
def _moto() -> Iterator[None]:
    with mock_aws():  # started once: each start resets every backend (~1 s)
        yield


@pytest.fixture
def sm(_moto: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[_SageMaker]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("sagemaker", region_name=REGION)
    yield _SageMaker(client)
    for endpoint in client.list_endpoints()["Endpoints"]:  # tests share one moto account
        client.delete_endpoint(EndpointName=endpoint["EndpointName"])
    for config in client.list_endpoint_configs()["EndpointConfigs"]:
        client.delete_endpoint_config(EndpointConfigName=config["EndpointConfigName"])
    for model in client.list_models()["Models"]:
        client.delete_model(ModelName=model["ModelName"])


def _event(
    version: int, status: str = "Approved", group: str = "lepton-classifier"
) -> dict[str, Any]:
    arn = f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{group}/{version}"
    return {
        "detail": {
            "ModelApprovalStatus": status,
            "ModelPackageGroupName": group,
            "ModelPackageArn": arn,
        }
    }


def test_first_approval_creates_the_endpoint(sm: _SageMaker) -> None:
    handler = _handler_module().handler
    assert handler(_event(1), None, sm) == {
        "action": "created",
        "endpoint": "lepton-classifier",
        "config": "lepton-classifier-v1",
    }
    model = sm.describe_model(ModelName="lepton-classifier-v1")
    assert model["ExecutionRoleArn"] == ENV["EXECUTION_ROLE_ARN"]
    assert model["Containers"][0]["ModelPackageName"].endswith("model-package/lepton-classifier/1")
    config = sm.describe_endpoint_config(EndpointConfigName="lepton-classifier-v1")
    assert config["KmsKeyId"] == ENV["KMS_KEY_ARN"]
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    assert (
        sm.describe_endpoint(EndpointName="lepton-classifier")["EndpointConfigName"]
        == "lepton-classifier-v1"
    )


def test_the_tests_set_every_variable_the_template_gives_the_function() -> None:
    props = load_template(TEMPLATE_PATH)["Resources"]["DeployFunction"]["Properties"]
    assert set(props["Environment"]["Variables"]) == set(ENV)


def test_capture_percent_turns_on_data_capture(
    sm: _SageMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = sm.describe_endpoint_config
    handler = _handler_module().handler
    handler(_event(1), None, sm)
    assert not config(EndpointConfigName="lepton-classifier-v1").get("DataCaptureConfig")
    monkeypatch.setenv("CAPTURE_PERCENT", "20")
    handler(_event(2), None, sm)
    capture = config(EndpointConfigName="lepton-classifier-v2")["DataCaptureConfig"]
    assert capture["EnableCapture"] is True and capture["InitialSamplingPercentage"] == 20
    assert capture["DestinationS3Uri"] == "s3://artifacts/capture"
    assert [o["CaptureMode"] for o in capture["CaptureOptions"]] == ["Input", "Output"]
    assert capture["KmsKeyId"] == ENV["KMS_KEY_ARN"]


def test_repeated_event_changes_nothing_and_new_version_updates(sm: _SageMaker) -> None:
    handler = _handler_module().handler
    handler(_event(1), None, sm)
    assert handler(_event(1), None, sm)["action"] == "unchanged"
    assert handler(_event(2), None, sm)["action"] == "updated"
    assert sm.updates == [
        {"EndpointName": "lepton-classifier", "EndpointConfigName": "lepton-classifier-v2"}
    ]
    # Re-approving version 1 rolls back to its existing model and config.
    assert handler(_event(1), None, sm)["action"] == "updated"
    assert sm.updates[-1]["EndpointConfigName"] == "lepton-classifier-v1"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (_event(3, status="Rejected"), "not approved"),
        (_event(3, group="other"), "other model package group"),
        ({}, "not approved"),
    ],
)
def test_other_events_are_ignored(sm: _SageMaker, event: dict[str, Any], reason: str) -> None:
    assert _handler_module().handler(event, None, sm) == {"action": "ignored", "reason": reason}
    assert sm.list_endpoints()["Endpoints"] == []


def test_already_existing_model_is_reused_but_other_errors_raise(sm: _SageMaker) -> None:
    module = _handler_module()

    def fail(message: str) -> Any:
        def call(**_: Any) -> Any:
            raise ClientError(
                {"Error": {"Code": "ValidationException", "Message": message}}, "CreateModel"
            )

        return call

    sm.create_model(
        ModelName="lepton-classifier-v5",
        ExecutionRoleArn=ENV["EXECUTION_ROLE_ARN"],
        Containers=[{"Image": "x"}],
    )  # left behind by an earlier, failed attempt
    sm.create_model = fail("Cannot create already existing model")  # type: ignore[method-assign]
    assert module.handler(_event(5), None, sm)["action"] == "created"
    sm.create_model = fail("User is not authorized")  # type: ignore[method-assign]
    with pytest.raises(ClientError, match="not authorized"):
        module.handler(_event(6), None, sm)
