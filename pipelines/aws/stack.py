"""The AWS side as the CLI sees it: validate, deploy and read `infra/template.yaml`.

`lepton infra validate|deploy|outputs` call these functions; clients are passed in (built by
the caller from `Settings`), so tests hand in moto clients and nothing here reads the
environment. Stack outputs are the one source of bucket names, role ARNs and the like:
`settings_env(outputs)` turns them into the variables `load_settings()` reads.

"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.settings import Settings

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "infra" / "template.yaml"
DEFAULT_STACK_NAME = "lepton"
# Roles get generated names, so CAPABILITY_NAMED_IAM is not needed (and not granted).
CAPABILITIES = ("CAPABILITY_IAM",)
TEMPLATE_BODY_MAX_BYTES = 51_200  # CloudFormation's limit for an inline TemplateBody

# Stack output -> the environment variable `load_settings()` reads it from (a test checks that
# every variable here is read there). `--stack` and `lepton infra outputs --format env` both
# go through this one map.
OUTPUT_ENV = {
    "DataBucketName": "LEPTON_DATA_BUCKET",
    "ArtifactBucketName": "LEPTON_ARTIFACT_BUCKET",
    "ModelPackageGroupName": "LEPTON_MODEL_NAME",
    "MlflowTrackingServerArn": "MLFLOW_TRACKING_URI",  # the sagemaker-mlflow plugin takes the ARN
    "SageMakerExecutionRoleArn": "LEPTON_SAGEMAKER_ROLE_ARN",
    "PipelineName": "LEPTON_PIPELINE_NAME",
    "EndpointName": "LEPTON_ENDPOINT_NAME",
    "RawDataUri": "LEPTON_RAW_DATA_URI",
    "ImageParameterName": "LEPTON_IMAGE_PARAMETER",  # records the image `lepton image build` made
}


class StackError(RuntimeError):
    """A stack is missing, stuck or failed; the message says which and why."""


@dataclass(frozen=True)
class DeployResult:
    stack_name: str
    action: str  # "created" | "updated" | "unchanged"
    outputs: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------- reading
def stack_outputs(stack_name: str, cfn_client: Any) -> dict[str, str]:
    """`{OutputKey: OutputValue}` of a deployed stack; StackError if it does not exist."""
    return {
        o["OutputKey"]: o["OutputValue"]
        for o in _describe(stack_name, cfn_client).get("Outputs", [])
    }


def settings_env(outputs: Mapping[str, str]) -> dict[str, str]:
    """Environment for `load_settings()` (aws mode) from stack outputs, e.g. for $GITHUB_ENV.

    MLflow artifacts live under `mlflow/` in the artifact bucket on AWS, so the MLflow bucket is
    the artifact bucket.
    """
    env = {"LEPTON_MODE": "aws"}
    for key, name in OUTPUT_ENV.items():
        if outputs.get(key):
            env[name] = outputs[key]
    if "LEPTON_ARTIFACT_BUCKET" in env:
        env["LEPTON_MLFLOW_BUCKET"] = env["LEPTON_ARTIFACT_BUCKET"]
    return env


def settings_from_stack(stack_name: str, cfn_client: Any, environ: Mapping[str, str]) -> Settings:
    """Settings as `load_settings()` would read them after exporting the stack's outputs."""
    from pipelines.settings import load_settings

    return load_settings({**environ, **settings_env(stack_outputs(stack_name, cfn_client))})


def format_env(env: Mapping[str, str]) -> str:
    """`KEY=value` lines (the $GITHUB_ENV and dotenv format); values never contain newlines."""
    for key, value in env.items():
        if "\n" in value:
            raise ValueError(f"{key} has a newline; refusing to write it as KEY=value")
    return "".join(f"{key}={value}\n" for key, value in env.items())


def _describe(stack_name: str, cfn_client: Any) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        stacks = cfn_client.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            raise StackError(
                f"stack {stack_name!r} does not exist (deploy it: lepton infra deploy)"
            ) from exc
        raise
    return stacks[0]


# ------------------------------------------------------------------------- validating
def validate_template(path: Path | str = TEMPLATE_PATH) -> list[str]:
    """cfn-lint findings (errors and warnings) as `file:line:col: RULE message`; [] = clean."""
    from cfnlint.api import lint_file  # dev dependency, imported only when validating

    matches = lint_file(Path(path))
    return [
        f"{m.filename}:{m.linenumber}:{m.columnnumber}: {m.rule.id} {m.message}" for m in matches
    ]


def template_parameters(path: Path | str = TEMPLATE_PATH) -> dict[str, dict[str, Any]]:
    """The template's Parameters section (names -> declarations)."""
    return dict(load_template(Path(path)).get("Parameters") or {})


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that keeps CloudFormation short-form tags (`!Ref x`) as plain values."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _tag)


def load_template(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # a SafeLoader subclass


# ------------------------------------------------------------------------- deploying
def deploy_stack(
    stack_name: str,
    cfn_client: Any,
    *,
    template_path: Path | str = TEMPLATE_PATH,
    parameters: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    wait: bool = True,
    poll_seconds: float = 10,
    max_wait_seconds: int = 3600,
) -> DeployResult:
    """Create the stack, or update it in place; waits and returns the outputs.

    On update, template parameters not given keep their previous values (so a later deploy
    need not repeat GitHubOwner/GitHubRepo). "No updates are to be performed" is success.
    A failure raises StackError with the failed resources' reasons.
    """
    from botocore.exceptions import ClientError, WaiterError

    path = Path(template_path)
    body = path.read_text()
    if len(body.encode()) > TEMPLATE_BODY_MAX_BYTES:
        raise StackError(f"{path} is over {TEMPLATE_BODY_MAX_BYTES} bytes; upload it to S3 first")
    given = dict(parameters or {})
    declared = template_parameters(path)
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(
            f"unknown template parameters: {', '.join(unknown)} (known: {', '.join(sorted(declared))})"
        )

    existing = _existing_stack(stack_name, cfn_client)
    if existing is not None and existing["StackStatus"] == "ROLLBACK_COMPLETE":
        raise StackError(
            f"stack {stack_name!r} is ROLLBACK_COMPLETE (its first create failed); delete it, then deploy again"
        )
    if existing is not None and existing["StackStatus"].endswith("_IN_PROGRESS"):
        raise StackError(
            f"stack {stack_name!r} is {existing['StackStatus']}; wait for it to finish"
        )

    previous = {p["ParameterKey"] for p in (existing or {}).get("Parameters", [])}
    cfn_params: list[dict[str, Any]] = [
        {"ParameterKey": k, "ParameterValue": v} for k, v in given.items()
    ]
    cfn_params += [
        {"ParameterKey": k, "UsePreviousValue": True}
        for k in declared
        if k not in given and k in previous
    ]
    kwargs: dict[str, Any] = {
        "StackName": stack_name,
        "TemplateBody": body,
        "Parameters": cfn_params,
        "Capabilities": list(CAPABILITIES),
        "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()],
    }
    waiter_config = {
        "Delay": poll_seconds,
        "MaxAttempts": max(1, int(max_wait_seconds / max(1.0, poll_seconds))),
    }
    try:
        if existing is None:
            cfn_client.create_stack(**kwargs, OnFailure="ROLLBACK")
            action, waiter = "created", "stack_create_complete"
        else:
            try:
                cfn_client.update_stack(**kwargs)
            except ClientError as exc:
                if "No updates are to be performed" in str(exc):
                    return DeployResult(
                        stack_name, "unchanged", stack_outputs(stack_name, cfn_client)
                    )
                raise
            action, waiter = "updated", "stack_update_complete"
        if wait:
            cfn_client.get_waiter(waiter).wait(StackName=stack_name, WaiterConfig=waiter_config)
    except WaiterError as exc:
        raise StackError(
            f"stack {stack_name!r} did not deploy: {failure_reasons(stack_name, cfn_client)}"
        ) from exc
    outputs = stack_outputs(stack_name, cfn_client) if wait else {}
    return DeployResult(stack_name, action, outputs)


def _existing_stack(stack_name: str, cfn_client: Any) -> dict[str, Any] | None:
    try:
        stack = _describe(stack_name, cfn_client)
    except StackError:
        return None
    return None if stack.get("StackStatus") == "DELETE_COMPLETE" else stack


def failure_reasons(stack_name: str, cfn_client: Any, limit: int = 5) -> str:
    """The newest `*_FAILED` stack events as `Resource: reason; ...`."""
    events = cfn_client.describe_stack_events(StackName=stack_name).get("StackEvents", [])
    failed = [e for e in events if str(e.get("ResourceStatus", "")).endswith("FAILED")]
    reasons = [
        f"{e.get('LogicalResourceId')}: {e.get('ResourceStatusReason', '?')}"
        for e in failed[:limit]
    ]
    return "; ".join(reasons) or "no failed resource reported (see the CloudFormation console)"
