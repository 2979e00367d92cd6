"""`lepton monitor schedule`: the drift monitor as a SageMaker Model Monitor schedule.

Model Monitor's bring-your-own-container contract: every hour (or the given cron) it copies the
endpoint's captured files of the last window to `dataset_source`, the baseline to
`baseline_statistics`, runs the image, and uploads `output_path` (our report:
constraint_violations.json makes the execution CompletedWithViolations). The project image holds
the dependencies but not the code, and a monitoring job takes no extra inputs, so its entry
point first fetches the code bundle `upsert` uploaded (LEPTON_CODE_URI) with boto3, then runs
`pipelines.monitor.step`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.definition import names as n

CODE_DIR = "/opt/ml/processing/code"
INPUT_DIR = "/opt/ml/processing/input/endpoint"
OUTPUT_DIR = "/opt/ml/processing/resultdata"
HOURLY = "cron(0 * ? * * *)"
INSTANCE_TYPE = "ml.m5.large"

# Runs in the container before our code exists there: boto3 and the standard library only.
BOOTSTRAP = f"""
import os, runpy, sys
import boto3
bucket, _, prefix = os.environ["LEPTON_CODE_URI"].removeprefix("s3://").partition("/")
root = os.environ.get("LEPTON_CODE_DIR", "{CODE_DIR}")
s3 = boto3.client("s3")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
    for obj in page.get("Contents", []):
        path = os.path.join(root, obj["Key"][len(prefix) + 1:])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, obj["Key"], path)
sys.path.insert(0, root)
sys.argv = ["{n.MONITOR_MODULE}", *sys.argv[1:]]  # python3 -c CODE ARGS...: the step's ARGS
runpy.run_module("{n.MONITOR_MODULE}", run_name="__main__")
"""


def schedule_request(
    *,
    name: str,
    endpoint: str,
    image_uri: str,
    role_arn: str,
    code_uri: str,
    baseline_uri: str,
    output_uri: str,
    instance_type: str = INSTANCE_TYPE,
    cron: str = HOURLY,
    thresholds: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The CreateMonitoringSchedule request (botocore's shape; tests validate it)."""
    env = {"LEPTON_CODE_URI": code_uri, "PYTHONUNBUFFERED": "1"}
    args = [f"--{k}={v}" for k, v in (thresholds or {}).items()]
    return {
        "MonitoringScheduleName": name,
        "MonitoringScheduleConfig": {
            "ScheduleConfig": {"ScheduleExpression": cron},
            "MonitoringJobDefinition": {
                "BaselineConfig": {"StatisticsResource": {"S3Uri": baseline_uri}},
                "MonitoringInputs": [
                    {"EndpointInput": {"EndpointName": endpoint, "LocalPath": INPUT_DIR}}
                ],
                "MonitoringOutputConfig": {
                    "MonitoringOutputs": [
                        {
                            "S3Output": {
                                "S3Uri": output_uri,
                                "LocalPath": OUTPUT_DIR,
                                "S3UploadMode": "EndOfJob",
                            }
                        }
                    ]
                },
                "MonitoringResources": {
                    "ClusterConfig": {
                        "InstanceCount": 1,
                        "InstanceType": instance_type,
                        "VolumeSizeInGB": 30,
                    }
                },
                "MonitoringAppSpecification": {
                    "ImageUri": image_uri,
                    "ContainerEntrypoint": ["python3", "-c", BOOTSTRAP, *args],
                },
                "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
                "Environment": env,
                "RoleArn": role_arn,
            },
        },
    }
