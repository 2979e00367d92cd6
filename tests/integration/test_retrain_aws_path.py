""".github/workflows/retrain.yml, AWS path: its own `run:` commands, executed in order against a
moto server holding the real stack, the way GitHub Actions runs them ($GITHUB_ENV carried from
step to step). Proves the role and bucket reach `lepton pipeline upsert` through the settings.

The OIDC step (aws-actions/configure-aws-credentials) is the one step not run: it only puts
credentials and AWS_REGION into the environment, which the test does itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from pipelines.aws.stack import deploy_stack
from pipelines.runner.record import RunRecord

ROOT = Path(__file__).resolve().parents[2]
RETRAIN = ROOT / ".github" / "workflows" / "retrain.yml"
REGION = "eu-west-1"
AWS_ONLY = "steps.target.outputs.where == 'aws'"
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Tried to parse AWS::")]


def _workflow() -> dict[str, Any]:
    data = yaml.safe_load(RETRAIN.read_text())
    (job,) = data["jobs"].values()
    return job


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _aws_env(endpoint: str, state: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "LEPTON_", "MLFLOW_")) or k == "AWS_EC2_METADATA_DISABLED"
    }
    env.update(
        {
            # what configure-aws-credentials leaves behind, pointed at moto
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint,
            "LEPTON_STATE_DIR": str(state),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


def _github_env(path: Path) -> dict[str, str]:
    """The KEY=value lines a step appended to $GITHUB_ENV."""
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def test_the_aws_path_of_the_retrain_workflow_runs_against_moto(
    moto_server: str, tmp_path: Path
) -> None:
    job = _workflow()
    env = _aws_env(moto_server, tmp_path / "state")
    env.update(
        {
            k: str(v).replace("${{ vars.LEPTON_STACK_NAME || 'lepton' }}", "lepton")
            for k, v in job.get("env", {}).items()
        }
    )
    stack = env["LEPTON_STACK_NAME"]
    assert stack == "lepton"
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    cfn = session.client("cloudformation", endpoint_url=moto_server)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = {
            "GitHubOwner": "acme",
            "GitHubRepo": "lepton",
            "CreateGitHubOidcProvider": "false",
        }
        outputs = deploy_stack(stack, cfn, parameters=params, poll_seconds=0).outputs

    # The image was built before (`lepton image build` records its URI in the stack's parameter).
    image = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/lepton:gpu-0123456789abcdef"
    session.client("ssm", endpoint_url=moto_server).put_parameter(
        Name=outputs["ImageParameterName"], Value=image, Type="String", Overwrite=True
    )

    # The workspace is a copy of the checkout with the project's venv at .venv (as `make setup`
    # leaves it), so the workflow's `.venv/bin/lepton` lines run unchanged.
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("pipelines", "training", "inference", "infra"):  # infra/image: the requirements
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    (work / ".venv").symlink_to(Path(sys.prefix))
    env["PYTHONPATH"] = str(work)

    github_env = tmp_path / "github_env"
    summary_file = tmp_path / "step_summary"
    github_env.touch()
    ran = []
    for step in job["steps"]:
        if step.get("if") != AWS_ONLY or "run" not in step:
            continue
        step_env = {**env, **_github_env(github_env), "GITHUB_ENV": str(github_env)}
        proc = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", step["run"]],
            cwd=work,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"{step['name']}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        ran.append(step["name"])
    assert ran == [
        "Read the stack outputs",
        "Upsert the SageMaker pipeline",
        "Start the pipeline and wait",
    ]

    exported = _github_env(github_env)
    role = outputs["SageMakerExecutionRoleArn"]
    assert exported["LEPTON_SAGEMAKER_ROLE_ARN"] == role and exported["LEPTON_MODE"] == "aws"
    sm = session.client("sagemaker", endpoint_url=moto_server)
    name = outputs["PipelineName"]
    described = sm.describe_pipeline(PipelineName=name)
    assert described["RoleArn"] == role  # the role came through the settings, not a flag
    assert image in described["PipelineDefinition"]  # and the image through its parameter
    s3 = session.client("s3", endpoint_url=moto_server)
    code = s3.list_objects_v2(Bucket=outputs["ArtifactBucketName"], Prefix="pipeline/code/")
    assert code.get("KeyCount", 0) > 0  # the code bundle went to the stack's artifact bucket
    executions = sm.list_pipeline_executions(PipelineName=name)["PipelineExecutionSummaries"]
    assert len(executions) == 1

    record = RunRecord.read(tmp_path / "state")
    assert record is not None and record.where == "aws" and record.status == "Succeeded"
    assert record.execution_id == executions[0]["PipelineExecutionArn"]

    (summary_step,) = [s for s in job["steps"] if "GITHUB_STEP_SUMMARY" in s.get("run", "")]
    proc = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", summary_step["run"]],
        cwd=work,
        env={
            **env,
            **_github_env(github_env),
            "GITHUB_STEP_SUMMARY": str(summary_file),
            "WHERE": "aws",
            "TRIGGER": "schedule",
            "RUN_URL": "https://example.invalid/run/1",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary_file.read_text().startswith("## Retraining (aws, schedule): Succeeded")
