"""The AWS side as the CLI sees it: validate, deploy and read `infra/template.yaml`.

`lepton infra validate|deploy|outputs` call these functions; clients are passed in (built by
the caller from `Settings`), so tests hand in moto clients and nothing here reads the
environment. Stack outputs are the one source of bucket names, role ARNs and the like:
`settings_env(outputs)` turns them into the variables `load_settings()` reads.

`run_summary_markdown` renders `.lepton/last-run.json` for a CI job summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.settings import Settings

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "infra" / "template.yaml"
DEFAULT_STACK_NAME = "lepton"
# Roles get generated names, so CAPABILITY_NAMED_IAM is not needed (and not granted).
CAPABILITIES = ("CAPABILITY_IAM",)
TEMPLATE_BODY_MAX_BYTES = 51_200  # CloudFormation's limit for an inline TemplateBody

# Output key -> environment variable. The first group is read by `load_settings()` today;
# the LEPTON_* names after it are for the pipeline commands (upsert needs the role).
OUTPUT_ENV = {
    "DataBucketName": "LEPTON_DATA_BUCKET",
    "ArtifactBucketName": "LEPTON_ARTIFACT_BUCKET",
    "ModelPackageGroupName": "LEPTON_MODEL_NAME",
    "MlflowTrackingServerArn": "MLFLOW_TRACKING_URI",  # the sagemaker-mlflow plugin takes the ARN
    "SageMakerExecutionRoleArn": "LEPTON_SAGEMAKER_ROLE_ARN",
    "PipelineName": "LEPTON_PIPELINE_NAME",
    "EndpointName": "LEPTON_ENDPOINT_NAME",
    "KmsKeyArn": "LEPTON_KMS_KEY_ARN",
    "RawDataUri": "LEPTON_RAW_DATA_URI",
}


class StackError(RuntimeError):
    """A stack is missing, stuck or failed; the message says which and why."""


@dataclass(frozen=True)
class DeployResult:
    stack_name: str
    action: str  # "created" | "updated" | "unchanged"
    outputs: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------- reading
def cloudformation_client(settings: Settings) -> Any:
    """A CloudFormation client for the configured region (boto3 itself honours
    AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_CLOUDFORMATION, e.g. a moto server)."""
    import boto3

    return boto3.session.Session().client("cloudformation", region_name=settings.region)


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
def parse_parameters(pairs: Iterable[str]) -> dict[str, str]:
    """`["GitHubOwner=acme", "GitHubRepo=lepton"]` -> dict; the value may contain '='."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"parameter must be KEY=VALUE, got {pair!r}")
        params[key.strip()] = value
    return params


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


# ------------------------------------------------------------------------- CI summary
def load_run(path: Path | str) -> dict[str, Any] | None:
    """The run record (`.lepton/last-run.json`), or None when there is none."""
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else None


def run_summary_markdown(run: Mapping[str, Any] | None, title: str = "Retraining") -> str:
    """Markdown for $GITHUB_STEP_SUMMARY: status, metrics, gate result, steps and links.

    Reads what is there and skips what is not: `status`, `pipeline_name`, `id` /
    `execution_arn`, `failure`, `metrics` (or an evaluation.json found in a step's
    `property_files`), `gate` (`{"passed": bool, ...}`, else the Condition step's outcome),
    `steps` (mapping or list of `{name, status, seconds, message}`), `links` (`{label: url}`),
    `model_package_arn`, `endpoint`.
    """
    if not run:
        return (
            f"## {title}\n\nNo run record was written (`.lepton/last-run.json`); see the job log.\n"
        )
    lines = [f"## {title}: {run.get('status', 'unknown')}", ""]
    for label, key in (
        ("Pipeline", "pipeline_name"),
        ("Execution", "execution_arn"),
        ("Execution", "id"),
        ("Model package", "model_package_arn"),
        ("Endpoint", "endpoint"),
        ("Failure", "failure"),
    ):
        if run.get(key):
            lines.append(f"- **{label}**: `{run[key]}`")
    steps = _steps(run)
    gate = run.get("gate") or _gate_from_steps(steps)
    if gate:
        passed = gate.get("passed")
        verdict = "passed" if passed is True else "failed" if passed is False else "unknown"
        detail = ", ".join(f"{k}={v}" for k, v in gate.items() if k != "passed")
        lines.append(f"- **Quality gate**: {verdict}" + (f" ({detail})" if detail else ""))
    metrics = run.get("metrics") or _metrics_from_steps(steps)
    if metrics:
        lines += ["", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    if steps:
        lines += ["", "| step | status | seconds | note |", "| --- | --- | --- | --- |"]
        for s in steps:
            note = str(s.get("message") or "").replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(
                f"| {s.get('name')} | {s.get('status')} | {s.get('seconds') or ''} | {note} |"
            )
    links = run.get("links") or {}
    if links:
        lines += ["", "Links: " + " · ".join(f"[{label}]({url})" for label, url in links.items())]
    return "\n".join(lines) + "\n"


def _steps(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = run.get("steps") or []
    if isinstance(raw, Mapping):
        return [{"name": name, **rec} for name, rec in raw.items()]
    return [dict(s) for s in raw]


def _metrics_from_steps(steps: list[dict[str, Any]]) -> dict[str, Any]:
    for step in steps:
        for doc in (step.get("property_files") or {}).values():
            found = (
                (doc or {}).get("multiclass_classification_metrics")
                if isinstance(doc, Mapping)
                else None
            )
            if found:
                return {
                    k: v.get("value")
                    for k, v in found.items()
                    if isinstance(v, Mapping) and "value" in v
                }
    return {}


def _gate_from_steps(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    for step in steps:
        if step.get("type") == "Condition":
            outcome = str(step.get("properties", {}).get("Outcome")).lower()
            passed = {"true": True, "false": False}.get(outcome)
            return {"passed": passed, "step": step.get("name")}
    return None


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
