"""`lepton image build` and `resolve_image_uri` against the stack deployed into moto (in-process).

What moto (5.2) does and does not do here, and how each gap is covered:
- CloudFormation skips AWS::CodeBuild::Project, so the stack has no ImageBuildProjectName output:
  the project is created with CodeBuild's own API from the template's properties, resolved by
  moto against the deployed stack, and its name is taken from them.
- CloudFormation's ECR repository keeps the name and tag immutability but drops the scanning and
  encryption settings (moto reads the template's keys as API keys) and the lifecycle policy:
  those are checked on the template (tests/unit/test_infra_template_image.py), and the
  lifecycle policy is put through ECR's API, which validates it
  (tests/integration/infra_moto/test_image.py).
- CodeBuild runs nothing: StartBuild ignores the source, buildspec and environment overrides, the
  first BatchGetBuilds reports the build COMPLETED/SUCCEEDED (always, even after StopBuild), and
  no log stream is written (the build's `logs` name none). `Agent` stands in for the buildspec:
  when a build starts it reads the uploaded zip, writes log lines to the stream CodeBuild would
  use (the build id's UUID in the project's log group), puts an image manifest under IMAGE_TAG and
  records the URI in IMAGE_PARAMETER; a test can leave out any of these, keep the build
  IN_PROGRESS for some polls (log lines arrive between them) or report a phase as FAILED.
- ECR's PutImage takes a bare manifest (no layers); DescribeImages and immutable tags behave.
- No Docker engine on this machine: `--docker` is tested for its error when no engine answers
  and for skipping a build whose image exists (which needs no engine).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from pipelines.aws.image import (
    ImageClients,
    ImageError,
    ImageStack,
    LogTail,
    build_in_codebuild,
    recorded_uri,
    resolve_image_uri,
)
from pipelines.aws.image_context import CONTEXT_FILES, NATIVE, BuildContext, load_context
from pipelines.aws.image_docker import DockerUnavailable, build_with_docker, check_engine
from pipelines.aws.image_lock import IMAGE_DIR
from pipelines.aws.stack import deploy_stack
from pipelines.cli import main
from pipelines.settings import load_settings

REGION = "eu-west-1"
STACK = "lepton-img"
PARAMS = {"GitHubOwner": "acme", "GitHubRepo": "lepton", "CreateGitHubOidcProvider": "false"}
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS::")
MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 2,
        "digest": "sha256:" + "0" * 64,
    },
    "layers": [],
}


def _client(name: str) -> Any:
    return boto3.client(name, region_name=REGION)


def _resolved_properties(logical_id: str) -> dict[str, Any]:
    from moto.cloudformation import cloudformation_backends
    from moto.cloudformation.parsing import clean_json
    from moto.core import DEFAULT_ACCOUNT_ID

    backend = cloudformation_backends[DEFAULT_ACCOUNT_ID][REGION]
    stack = next(s for s in backend.stacks.values() if s.name == STACK)
    return clean_json(
        stack.template_dict["Resources"][logical_id]["Properties"], stack.resource_map
    )


def _create_project(props: dict[str, Any]) -> str:
    """The template's ImageBuildProject, through CodeBuild's API (moto's CFN skips the type)."""
    env, source = props["Environment"], props["Source"]
    _client("codebuild").create_project(
        name=props["Name"],
        description=props["Description"],
        source={
            "type": source["Type"],
            "location": source["Location"],
            "buildspec": source["BuildSpec"],
        },
        artifacts={"type": props["Artifacts"]["Type"]},
        environment={
            "type": env["Type"],
            "image": env["Image"],
            "computeType": env["ComputeType"],
            "privilegedMode": env["PrivilegedMode"],
            "environmentVariables": [
                {"name": v["Name"], "value": v["Value"], "type": "PLAINTEXT"}
                for v in env["EnvironmentVariables"]
            ],
        },
        serviceRole=props["ServiceRole"],
        encryptionKey=props["EncryptionKey"],
        timeoutInMinutes=props["TimeoutInMinutes"],
        logsConfig={
            "cloudWatchLogs": {
                "status": props["LogsConfig"]["CloudWatchLogs"]["Status"],
                "groupName": props["LogsConfig"]["CloudWatchLogs"]["GroupName"],
            }
        },
    )
    return str(props["Name"])


@pytest.fixture(scope="module")
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        logging.getLogger("moto").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = deploy_stack(
                STACK, _client("cloudformation"), parameters=PARAMS, poll_seconds=0
            )
        assert "ImageBuildProjectName" not in result.outputs  # the gap the docstring names
        project = _create_project(_resolved_properties("ImageBuildProject"))
        outputs = {**result.outputs, "ImageBuildProjectName": project}
        yield {"outputs": outputs, "stack": ImageStack.from_outputs(outputs, STACK)}


class Agent:
    """What CodeBuild would do running buildspec.yml, done when a build starts (see the top)."""

    def __init__(
        self,
        *,
        push: bool = True,
        record: bool = True,
        fail_phase: str | None = None,
        polls_in_progress: int = 0,
        lines_per_poll: int = 0,
    ) -> None:
        self.codebuild = _client("codebuild")
        self.push, self.record, self.fail_phase = push, record, fail_phase
        self.polls_left, self.lines_per_poll = polls_in_progress, lines_per_poll
        self.requests: list[dict[str, Any]] = []
        self.sources: list[set[str]] = []
        self.written: list[str] = []
        self._where: tuple[str, str] | None = None

    def start_build(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        build = self.codebuild.start_build(**request)["build"]
        (project,) = self.codebuild.batch_get_projects(names=[request["projectName"]])["projects"]
        env = {v["name"]: v["value"] for v in project["environment"]["environmentVariables"]}
        env.update({v["name"]: v["value"] for v in request["environmentVariablesOverride"]})
        bucket, key = request["sourceLocationOverride"].split("/", 1)
        body = _client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            self.sources.append(set(archive.namelist()))
        group = project["logsConfig"]["cloudWatchLogs"]["groupName"]
        self._where = (group, build["id"].rsplit(":", 1)[-1])
        _client("logs").create_log_stream(logGroupName=group, logStreamName=self._where[1])
        self._log([f"Entering phase BUILD for {env['IMAGE_TAG']}", f"flavour {env['FLAVOUR']}"])
        uri = f"{env['REPOSITORY_URI']}:{env['IMAGE_TAG']}"
        if self.push:
            _client("ecr").put_image(
                repositoryName=env["REPOSITORY_URI"].split("/", 1)[1],
                imageTag=env["IMAGE_TAG"],
                imageManifest=json.dumps(MANIFEST | {"annotations": {"tag": env["IMAGE_TAG"]}}),
            )
        if self.record:
            _client("ssm").put_parameter(
                Name=env["IMAGE_PARAMETER"], Value=uri, Type="String", Overwrite=True
            )
        return {"build": build}

    def _log(self, lines: list[str]) -> None:
        assert self._where is not None
        if not lines:
            return
        now = int(time.time() * 1000)
        _client("logs").put_log_events(
            logGroupName=self._where[0],
            logStreamName=self._where[1],
            logEvents=[{"timestamp": now, "message": line} for line in lines],
        )
        self.written += lines

    def batch_get_builds(self, ids: list[str]) -> dict[str, Any]:
        answer = self.codebuild.batch_get_builds(ids=ids)
        (build,) = answer["builds"]
        if self.polls_left > 0:
            self.polls_left -= 1
            build.update(buildStatus="IN_PROGRESS", currentPhase="BUILD")
            self._log([f"step {len(self.written) + i}" for i in range(self.lines_per_poll)])
        elif self.fail_phase:
            for phase in build["phases"]:
                if phase["phaseType"] == self.fail_phase:
                    phase["phaseStatus"] = "FAILED"
                    phase["contexts"] = [
                        {"statusCode": "COMMAND_EXECUTION_ERROR", "message": "pip check failed"}
                    ]
            build["buildStatus"] = "FAILED"
        return answer


def _context(tmp_path: Path, label: str) -> BuildContext:
    """A copy of infra/image/ whose Dockerfile differs by a comment: a context of its own."""
    folder = tmp_path / label
    shutil.copytree(IMAGE_DIR, folder)
    with (folder / "Dockerfile").open("a") as dockerfile:
        dockerfile.write(f"# test context {label}\n")
    return load_context(folder)


def _clients(agent: Agent | None = None) -> ImageClients:
    return ImageClients(
        s3=_client("s3"),
        codebuild=agent or Agent(),
        ecr=_client("ecr"),
        ssm=_client("ssm"),
        logs=_client("logs"),
    )


def _builds(aws: dict[str, Any]) -> int:
    return len(
        _client("codebuild").list_builds_for_project(projectName=aws["stack"].project)["ids"]
    )


def test_build_uploads_starts_streams_and_records(aws: dict[str, Any], tmp_path: Path) -> None:
    stack: ImageStack = aws["stack"]
    context = _context(tmp_path, "first")
    agent = Agent(polls_in_progress=3, lines_per_poll=4)
    echoed: list[str] = []
    result = build_in_codebuild(
        stack, context, "gpu", _clients(agent), echo=echoed.append, poll_s=0
    )

    assert result.action == "built" and result.build_id
    assert result.uri == f"{aws['outputs']['ImageRepositoryUri']}:gpu-{context.digest}"
    (request,) = agent.requests
    assert request["projectName"] == stack.project
    assert request["sourceTypeOverride"] == "S3"
    assert request["sourceLocationOverride"] == f"{stack.bucket}/image-build/{context.digest}.zip"
    assert {v["name"]: v["value"] for v in request["environmentVariablesOverride"]} == {
        "IMAGE_TAG": f"gpu-{context.digest}",
        "FLAVOUR": "gpu",
    }
    # The zip CodeBuild unpacks holds the context's files: the fixed ones and native/'s sources.
    uploaded = {name for name, _, _ in context.files}
    assert agent.sources == [uploaded]
    assert set(CONTEXT_FILES) < uploaded and f"{NATIVE}/lepton_pixels.c" in uploaded
    stored = _client("s3").get_object(Bucket=stack.bucket, Key=context.key)["Body"].read()
    assert stored == context.zip_bytes()
    # Every log line, in order, exactly once, though they arrived over several polls.
    streamed = [line.removeprefix("  | ") for line in echoed if line.startswith("  | ")]
    assert streamed == agent.written and len(agent.written) == 2 + 3 * 4
    assert any("phase BUILD" in line for line in echoed)
    assert any("phase COMPLETED" in line for line in echoed)
    assert recorded_uri(_client("ssm"), stack.parameter) == result.uri
    settings = load_settings({"LEPTON_MODE": "aws", "LEPTON_IMAGE_PARAMETER": stack.parameter})
    assert resolve_image_uri(settings, _client("ssm")) == result.uri


def test_an_unchanged_context_is_not_rebuilt(aws: dict[str, Any], tmp_path: Path) -> None:
    stack: ImageStack = aws["stack"]
    context = _context(tmp_path, "again")
    first = build_in_codebuild(stack, context, "cpu", _clients(), echo=lambda _: None, poll_s=0)
    other = build_in_codebuild(
        stack, _context(tmp_path, "other"), "cpu", _clients(), echo=lambda _: None, poll_s=0
    )
    assert recorded_uri(_client("ssm"), stack.parameter) == other.uri != first.uri
    before = _builds(aws)
    echoed: list[str] = []
    again = build_in_codebuild(stack, context, "cpu", _clients(), echo=echoed.append, poll_s=0)
    assert (again.action, again.uri, again.build_id) == ("exists", first.uri, None)
    assert _builds(aws) == before, "no build started"
    assert "not rebuilt" in echoed[-1]
    assert recorded_uri(_client("ssm"), stack.parameter) == first.uri  # recorded again
    gpu = build_in_codebuild(stack, context, "gpu", _clients(), echo=lambda _: None, poll_s=0)
    assert gpu.action == "built" and gpu.uri.endswith(f":gpu-{context.digest}")


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        (lambda: Agent(fail_phase="BUILD"), "FAILED: phase BUILD FAILED: pip check failed"),
        (lambda: Agent(push=False), "is not in the repository"),
        (lambda: Agent(record=False), "did not record"),
    ],
    ids=["failed", "not-pushed", "not-recorded"],
)
def test_a_build_that_does_not_deliver_is_an_error(
    aws: dict[str, Any], tmp_path: Path, agent: Any, message: str
) -> None:
    with pytest.raises(ImageError, match=message):
        build_in_codebuild(
            aws["stack"],
            _context(tmp_path, message[:6]),
            "gpu",
            _clients(agent()),
            echo=lambda _: None,
            poll_s=0,
        )


def test_a_build_that_runs_too_long_says_how_to_stop_it(
    aws: dict[str, Any], tmp_path: Path
) -> None:
    agent = Agent(polls_in_progress=1000)
    with pytest.raises(ImageError, match="still BUILD .* stop-build"):
        build_in_codebuild(
            aws["stack"],
            _context(tmp_path, "slow"),
            "gpu",
            _clients(agent),
            echo=lambda _: None,
            poll_s=0,
            timeout_s=0,
        )


def test_log_tail_follows_the_forward_token(aws: dict[str, Any]) -> None:
    logs = _client("logs")
    group = aws["stack"].log_group
    logs.create_log_stream(logGroupName=group, logStreamName="tail")
    tail = LogTail(logs, group, "tail", page_size=10)
    assert tail.read_new() == []
    LogTail(logs, group, "not-yet-created").read_new()  # a missing stream is "nothing yet"

    def put(lines: list[str]) -> None:
        now = int(time.time() * 1000)
        logs.put_log_events(
            logGroupName=group,
            logStreamName="tail",
            logEvents=[{"timestamp": now, "message": f"{m}\n"} for m in lines],
        )

    put([f"a{i}" for i in range(25)])
    assert tail.read_new() == [f"a{i}" for i in range(25)]  # three pages
    assert tail.read_new() == []
    put(["b0", "b1"])
    assert tail.read_new() == ["b0", "b1"]


def test_resolve_image_uri(aws: dict[str, Any]) -> None:
    ssm = _client("ssm")
    parameter = "/resolve-test/image-uri"
    ssm.put_parameter(Name=parameter, Value="unset", Type="String")
    env = {"LEPTON_MODE": "aws", "LEPTON_IMAGE_PARAMETER": parameter}
    assert resolve_image_uri(load_settings(env), ssm) is None  # nothing built yet
    ssm.put_parameter(Name=parameter, Value="r.example/x:gpu-1", Type="String", Overwrite=True)
    assert resolve_image_uri(load_settings(env), ssm) == "r.example/x:gpu-1"
    pinned = {**env, "LEPTON_IMAGE_URI": "r.example/x:pinned"}
    assert resolve_image_uri(load_settings(pinned), ssm) == "r.example/x:pinned"
    assert resolve_image_uri(load_settings({"LEPTON_MODE": "aws"}), ssm) is None
    missing = {**env, "LEPTON_IMAGE_PARAMETER": "/nobody/image-uri"}
    with pytest.raises(
        ImageError, match="'/nobody/image-uri' does not exist in eu-west-1.*lepton infra deploy"
    ):
        resolve_image_uri(load_settings(missing), ssm)


def test_stack_without_image_outputs_is_a_clear_error(aws: dict[str, Any]) -> None:
    outputs = {k: v for k, v in aws["outputs"].items() if not k.startswith("Image")}
    with pytest.raises(ImageError, match="no ImageRepositoryUri, .*`lepton infra deploy`"):
        ImageStack.from_outputs(outputs, "old-stack")


def test_cli_image_uri(
    aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack: ImageStack = aws["stack"]
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("LEPTON_IMAGE_URI", raising=False)
    monkeypatch.delenv("LEPTON_IMAGE_PARAMETER", raising=False)
    _client("ssm").put_parameter(
        Name=stack.parameter, Value=stack.uri("gpu-cli"), Type="String", Overwrite=True
    )
    assert main(["image", "uri", "--stack", STACK]) == 0
    assert capsys.readouterr().out.strip() == stack.uri("gpu-cli")
    monkeypatch.setenv("LEPTON_IMAGE_PARAMETER", stack.parameter)
    assert main(["image", "uri"]) == 0
    assert capsys.readouterr().out.strip() == stack.uri("gpu-cli")
    monkeypatch.delenv("LEPTON_IMAGE_PARAMETER")
    assert main(["image", "uri"]) == 1
    assert "no image configured" in capsys.readouterr().err


# ------------------------------------------------------------------ --docker
def test_docker_without_an_engine_is_a_clear_error(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(
        DockerUnavailable,
        match="no Docker engine answered .*`lepton image build` \\(without --docker\\)",
    ):
        build_with_docker(
            aws["stack"], _context(tmp_path, "docker"), "gpu", _clients(), echo=lambda _: None
        )
    with pytest.raises(DockerUnavailable, match="no 'no-such-docker' command on PATH"):
        check_engine("no-such-docker")


def test_docker_skips_an_image_that_exists(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack: ImageStack = aws["stack"]
    context = _context(tmp_path, "docker-exists")
    built = build_in_codebuild(stack, context, "cpu", _clients(), echo=lambda _: None, poll_s=0)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # not needed
    result = build_with_docker(stack, context, "cpu", _clients(), echo=lambda _: None)
    assert (result.action, result.uri) == ("exists", built.uri)


def test_cli_image_build(
    aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lepton image build` end to end on the repository's own context: an image whose tag is in
    the repository is reused; `--docker` without an engine fails with one clear line. (The stack
    outputs are the fixture's: moto's stack lacks ImageBuildProjectName, see the top.)"""
    from pipelines.cli import image as image_cli

    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setattr(image_cli, "_stack_outputs", lambda settings, stack: aws["outputs"])
    stack: ImageStack = aws["stack"]
    tag = load_context().tag("cpu")
    assert main(["image", "build", "--stack", STACK, "--flavour", "cpu", "--docker"]) == 1
    assert "no Docker engine answered" in capsys.readouterr().err
    _client("ecr").put_image(
        repositoryName=stack.repository, imageTag=tag, imageManifest=json.dumps(MANIFEST)
    )
    assert main(["image", "build", "--stack", STACK, "--flavour", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == stack.uri(tag) and "not rebuilt" in out[-2]
    assert recorded_uri(_client("ssm"), stack.parameter) == stack.uri(tag)
