"""The pipeline on real SageMaker: upsert, start, wait, status (boto3; tested against moto).

Clients come from boto3's default chain with `settings.region`; botocore itself honours
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_SAGEMAKER` (moto server, VPC endpoints), so nothing here
reads the environment. `upsert` builds the definition offline, uploads the code bundle it
references (content-addressed: unchanged code is not uploaded again), then creates or updates
the pipeline. The CLI (`lepton pipeline upsert|start|wait|status|aws-definition`) is
pipelines/cli/pipeline_aws.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from pipelines.aws.clients import sagemaker_client
from pipelines.definition.config import PipelineConfig
from pipelines.settings import Settings, load_settings
from pipelines.storage import s3_client, split_s3_uri

TERMINAL_STATUSES = ("Succeeded", "Failed", "Stopped")


def _client(settings: Settings | None, client: Any) -> Any:
    """`client` if given (tests pass moto clients), else one built from settings."""
    return client if client is not None else sagemaker_client(settings or load_settings())


# ---- pipeline lifecycle ----------------------------------------------------------------


def upsert(
    cfg: PipelineConfig,
    settings: Settings,
    role_arn: str | None = None,
    *,
    source_root: Path | None = None,
    client: Any = None,
    s3: Any = None,
) -> str:
    """Create or update the pipeline for `cfg`; returns the pipeline ARN."""
    from pipelines.definition.build import build_definition

    role = role_arn or cfg.role_arn
    if not role:
        raise ValueError(
            "upsert needs an execution role: set LEPTON_SAGEMAKER_ROLE_ARN (`lepton infra "
            "outputs --format env` exports it), --role-arn, or --stack"
        )
    cfg = replace(cfg, role_arn=role)
    built = build_definition(cfg, source_root=source_root, staging_root=settings.state_dir / "code")
    built.bundle.upload(s3 if s3 is not None else s3_client(settings))
    sm = _client(settings, client)
    request = {
        "PipelineName": cfg.pipeline_name,
        "PipelineDefinition": built.definition,
        "RoleArn": role,
        "PipelineDescription": "lepton image-classification pipeline",
    }
    try:
        return sm.create_pipeline(**request)["PipelineArn"]
    except ClientError as exc:
        message = str(exc)
        if "already exists" not in message and "ResourceInUse" not in message:
            raise
    return sm.update_pipeline(**request)["PipelineArn"]


def start(
    pipeline_name: str,
    parameters: Mapping[str, object] | None = None,
    *,
    display_name: str | None = None,
    settings: Settings | None = None,
    client: Any = None,
) -> str:
    """Start an execution with parameter overrides (name -> value); returns its ARN."""
    request: dict[str, Any] = {
        "PipelineName": pipeline_name,
        "PipelineParameters": [{"Name": k, "Value": str(v)} for k, v in (parameters or {}).items()],
    }
    if display_name:
        request["PipelineExecutionDisplayName"] = display_name
    return _client(settings, client).start_pipeline_execution(**request)["PipelineExecutionArn"]


def wait(
    execution_arn: str,
    timeout_s: float = 6 * 3600,
    poll_s: float = 30,
    *,
    settings: Settings | None = None,
    client: Any = None,
    on_poll: Callable[[str], None] | None = None,
) -> str:
    """Poll until the execution ends; returns Succeeded, Failed or Stopped (TimeoutError else)."""
    sm = _client(settings, client)
    deadline = time.monotonic() + timeout_s
    while True:
        state = sm.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
        current = state["PipelineExecutionStatus"]
        if on_poll is not None:
            on_poll(current)
        if current in TERMINAL_STATUSES:
            return current
        if time.monotonic() + poll_s > deadline:
            raise TimeoutError(f"{execution_arn} still {current} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def is_execution_arn(target: str) -> bool:
    return target.startswith("arn:") and "/execution/" in target


def status(target: str, *, settings: Settings | None = None, client: Any = None) -> dict[str, Any]:
    """The execution's (or the pipeline's latest execution's) status, with its steps.

    Returns `{"pipeline_name", "execution_arn", "status", "failure_reason", "steps": [{"name",
    "type", "status", "start", "end", "failure_reason", "cache_hit_from"}]}`; `execution_arn` and
    `status` are None when the pipeline has never run; `outcome` is a Condition step's result.
    """
    sm = _client(settings, client)
    if is_execution_arn(target):
        arn = target
        pipeline_name = target.split(":pipeline/", 1)[1].split("/execution/", 1)[0]
    else:
        pipeline_name = target
        runs = sm.list_pipeline_executions(
            PipelineName=target, SortBy="CreationTime", SortOrder="Descending", MaxResults=10
        )
        summaries = sorted(
            runs.get("PipelineExecutionSummaries", []),
            key=lambda s: s.get("StartTime") or 0,
            reverse=True,
        )
        if not summaries:
            return {
                "pipeline_name": target,
                "execution_arn": None,
                "status": None,
                "failure_reason": None,
                "steps": [],
            }
        arn = summaries[0]["PipelineExecutionArn"]
    state = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
    return {
        "pipeline_name": pipeline_name,
        "execution_arn": arn,
        "status": state["PipelineExecutionStatus"],
        "failure_reason": state.get("FailureReason") or None,
        "steps": _steps(sm, arn),
    }


def _steps(sm: Any, execution_arn: str) -> list[dict[str, Any]]:
    try:
        pages = sm.get_paginator("list_pipeline_execution_steps").paginate(
            PipelineExecutionArn=execution_arn, SortOrder="Ascending"
        )
        raw = [s for page in pages for s in page.get("PipelineExecutionSteps", [])]
    except (ClientError, NotImplementedError):  # moto does not implement it
        return []
    return [
        {
            "name": s.get("StepName"),
            "type": next(iter(s.get("Metadata") or {}), None),
            "status": s.get("StepStatus"),
            "start": _iso(s.get("StartTime")),
            "end": _iso(s.get("EndTime")),
            "failure_reason": s.get("FailureReason"),
            "cache_hit_from": (s.get("CacheHitResult") or {}).get("SourcePipelineExecutionArn"),
            "outcome": ((s.get("Metadata") or {}).get("Condition") or {}).get("Outcome"),
        }
        for s in raw
    ]


def run_record(execution_arn: str, *, settings: Settings | None = None, client: Any = None) -> Any:
    """The run record (pipelines/runner/record.py) of a SageMaker execution."""
    from pipelines.runner.record import RunRecord, StepSummary

    info = status(execution_arn, settings=settings, client=client)
    steps = {
        str(s["name"]): StepSummary(
            type=str(s["type"] or ""),
            status=str(s["status"] or ""),
            cache=f"cached from {s['cache_hit_from']}" if s["cache_hit_from"] else None,
            message=s["failure_reason"],
        )
        for s in info["steps"]
    }
    outcomes = [str(s["outcome"]) for s in info["steps"] if s.get("outcome") is not None]
    return RunRecord(
        where="aws",
        pipeline_name=info["pipeline_name"],
        execution_id=execution_arn,
        status=str(info["status"]),
        failure=info["failure_reason"],
        gate_passed=None if not outcomes else outcomes[0].lower() == "true",
        steps=steps,
    )


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else value


def describe(
    pipeline_name: str, *, settings: Settings | None = None, client: Any = None
) -> dict[str, Any]:
    """The pipeline as SageMaker holds it, with its definition parsed."""
    d = _client(settings, client).describe_pipeline(PipelineName=pipeline_name)
    return {
        "arn": d["PipelineArn"],
        "name": d["PipelineName"],
        "status": d.get("PipelineStatus"),
        "role_arn": d.get("RoleArn"),
        "last_modified": _iso(d.get("LastModifiedTime")),
        "definition": json.loads(d["PipelineDefinition"]),
    }


# ---- the gate's champion --------------------------------------------------------------


def champion_accuracy(
    model_package_group: str, settings: Settings, *, client: Any = None, s3: Any = None
) -> float | None:
    """Accuracy of the newest Approved package in the group (from its evaluation.json), or None."""
    sm = _client(settings, client)
    try:
        packages = sm.list_model_packages(
            ModelPackageGroupName=model_package_group,
            ModelApprovalStatus="Approved",
            SortBy="CreationTime",
            SortOrder="Descending",
            MaxResults=1,
        ).get("ModelPackageSummaryList", [])
    except ClientError:
        return None  # no group yet: no champion
    if not packages:
        return None
    package = sm.describe_model_package(ModelPackageName=packages[0]["ModelPackageArn"])
    uri = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {}).get("S3Uri")
    if not uri:
        return None
    bucket, key = split_s3_uri(uri)
    body = (s3 if s3 is not None else s3_client(settings)).get_object(Bucket=bucket, Key=key)
    from pipelines.evaluate.report import accuracy_of

    return accuracy_of(json.loads(body["Body"].read()))


def data_snapshot(uri: str, settings: Settings, *, s3: Any = None) -> str:
    """An identity of the objects under `uri` (keys, sizes, ETags): a new or changed object
    gives a new value, so Prepare is never a stale cache hit on SageMaker."""
    from pipelines.runner.transfer import fingerprint

    try:
        digest = fingerprint(s3 if s3 is not None else s3_client(settings), uri)
    except ClientError as exc:
        raise ValueError(
            f"cannot list {uri} to name the data snapshot ({exc}); "
            "check InputDataUri, or pass --param DataSnapshot=<id>"
        ) from None
    return "listing-" + digest[:16]


def start_parameters(
    cfg: PipelineConfig, champion: float | None, overrides: Mapping[str, object] | None = None
) -> dict[str, object]:
    """Parameters for `start`: the gate's MinimumChampionAccuracy, then explicit overrides."""
    params: dict[str, object] = {"MinimumChampionAccuracy": cfg.champion_floor(champion)}
    params.update(overrides or {})
    return params
