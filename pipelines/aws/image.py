"""The pipeline's container image on AWS: where its URI is recorded, and building it in CodeBuild.

The stack (infra/template.yaml) owns an ECR repository, a CodeBuild project and an SSM parameter
(output ImageParameterName, exported as LEPTON_IMAGE_PARAMETER). `lepton image build` uploads the
build context (pipelines/aws/image_context.py) to the artifact bucket, starts the project, streams
its CloudWatch log and waits; the build (infra/image/buildspec.yml) pushes
`<repository>:<flavour>-<digest>` and records that URI in the parameter. A tag that is already in
the repository is not built again: the URI is recorded and nothing starts.
`resolve_image_uri(settings)` is what the pipeline definition uses. Clients are passed in (tests
hand in moto clients); nothing here reads the environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from pipelines.aws.clients import aws_client
from pipelines.aws.image_context import BuildContext
from pipelines.settings import Settings

UNSET = "unset"  # the parameter's value until a build records an image (the stack's initial value)
# Stack output -> ImageStack field.
STACK_OUTPUTS = {
    "ImageRepositoryUri": "repository_uri",
    "ImageBuildProjectName": "project",
    "ImageParameterName": "parameter",
    "ImageBuildLogGroupName": "log_group",
    "ArtifactBucketName": "bucket",
}
Echo = Callable[[str], None]


class ImageError(RuntimeError):
    """The image cannot be built, found or recorded; the message says which and how to fix it."""


@dataclass(frozen=True)
class ImageStack:
    """The stack's image resources (from its outputs)."""

    repository_uri: str  # <account>.dkr.ecr.<region>.amazonaws.com/<name>
    project: str  # CodeBuild project
    parameter: str  # SSM parameter that records the image URI
    log_group: str  # the project's CloudWatch log group
    bucket: str  # artifact bucket; build contexts go under image-build/

    @property
    def repository(self) -> str:
        return self.repository_uri.split("/", 1)[1]

    def uri(self, tag: str) -> str:
        return f"{self.repository_uri}:{tag}"

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, str], stack_name: str) -> ImageStack:
        missing = [key for key in STACK_OUTPUTS if not outputs.get(key)]
        if missing:
            raise ImageError(
                f"stack {stack_name!r} has no {', '.join(missing)} output: it predates the image "
                "resources; update it with `lepton infra deploy`"
            )
        return cls(**{field: outputs[key] for key, field in STACK_OUTPUTS.items()})


@dataclass(frozen=True)
class BuildResult:
    uri: str
    action: str  # "built" | "exists" (the tag was in the repository: nothing was built)
    build_id: str | None = None


@dataclass(frozen=True)
class ImageClients:
    """The clients a build uses (tests hand in moto's)."""

    s3: Any
    codebuild: Any
    ecr: Any
    ssm: Any
    logs: Any

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageClients:
        from pipelines.storage import s3_client

        services = ("codebuild", "ecr", "ssm", "logs")
        return cls(s3_client(settings), *(aws_client(settings, name) for name in services))


# ------------------------------------------------------------------ the recorded URI
def resolve_image_uri(settings: Settings, ssm: Any = None) -> str | None:
    """The image every step and the endpoint run: LEPTON_IMAGE_URI if set, else the value of the
    SSM parameter LEPTON_IMAGE_PARAMETER names, else None (not configured, or nothing built yet).
    A configured parameter that does not exist is an error naming it."""
    if settings.image_uri:
        return settings.image_uri
    if not settings.image_parameter:
        return None
    return recorded_uri(
        ssm if ssm is not None else aws_client(settings, "ssm"), settings.image_parameter
    )


def recorded_uri(ssm: Any, parameter: str) -> str | None:
    try:
        value = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ParameterNotFound":
            region = ssm.meta.region_name
            raise ImageError(
                f"SSM parameter {parameter!r} does not exist in {region}: deploy the stack "
                "(`lepton infra deploy`) or fix LEPTON_IMAGE_PARAMETER (`lepton infra outputs "
                "--format env` exports it)"
            ) from exc
        raise
    return None if value == UNSET else str(value)


def record_uri(ssm: Any, parameter: str, uri: str) -> None:
    ssm.put_parameter(Name=parameter, Value=uri, Type="String", Overwrite=True)


def image_exists(ecr: Any, repository: str, tag: str) -> bool:
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code == "ImageNotFoundException":
            return False
        if code == "RepositoryNotFoundException":
            raise ImageError(
                f"ECR repository {repository!r} does not exist: deploy the stack (`lepton infra deploy`)"
            ) from exc
        raise
    return True


# ------------------------------------------------------------------ the build log
class LogTail:
    """New lines of one CloudWatch log stream, following nextForwardToken until it stops moving."""

    def __init__(self, logs: Any, group: str, stream: str, page_size: int | None = None) -> None:
        self.logs, self.group, self.stream, self.page_size = logs, group, stream, page_size
        self._token: str | None = None

    def read_new(self) -> list[str]:
        lines: list[str] = []
        while True:
            request: dict[str, Any] = {
                "logGroupName": self.group,
                "logStreamName": self.stream,
                "startFromHead": True,
            }
            if self._token:
                request["nextToken"] = self._token
            if self.page_size:
                request["limit"] = self.page_size
            try:
                page = self.logs.get_log_events(**request)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ResourceNotFoundException":
                    return lines  # the build has not created its stream yet
                raise
            lines += [event["message"].rstrip("\n") for event in page.get("events", [])]
            token = page.get("nextForwardToken")
            if not token or token == self._token:
                return lines
            self._token = token


# ------------------------------------------------------------------ building in CodeBuild
def build_unless_exists(
    stack: ImageStack,
    context: BuildContext,
    flavour: str,
    clients: ImageClients,
    echo: Echo,
    build: Callable[[str, str], BuildResult],
) -> BuildResult:
    """`build(tag, uri)` unless the tag is in the repository already (same context, same
    flavour): content-addressed tags never need a second build, and immutable ones forbid it.
    Either way the URI ends up recorded in the stack's parameter."""
    tag = context.tag(flavour)
    uri = stack.uri(tag)
    if not image_exists(clients.ecr, stack.repository, tag):
        return build(tag, uri)
    record_uri(clients.ssm, stack.parameter, uri)
    echo(f"{uri} exists (same build context): not rebuilt; recorded in {stack.parameter}")
    return BuildResult(uri, "exists")


def upload_context(s3: Any, bucket: str, context: BuildContext) -> str:
    """Put the context's zip at image-build/<digest>.zip (once); returns CodeBuild's `bucket/key`."""
    try:
        s3.head_object(Bucket=bucket, Key=context.key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
            raise
        s3.put_object(Bucket=bucket, Key=context.key, Body=context.zip_bytes())
    return f"{bucket}/{context.key}"


def build_in_codebuild(
    stack: ImageStack,
    context: BuildContext,
    flavour: str,
    clients: ImageClients,
    *,
    echo: Echo = print,
    poll_s: float = 10.0,
    timeout_s: float = 3600.0,
) -> BuildResult:
    """Build and push `context` as `flavour` in CodeBuild unless its tag exists."""

    def build(tag: str, uri: str) -> BuildResult:
        source = upload_context(clients.s3, stack.bucket, context)
        echo(f"uploaded the build context to s3://{source}")
        started = clients.codebuild.start_build(
            projectName=stack.project,
            sourceTypeOverride="S3",
            sourceLocationOverride=source,
            environmentVariablesOverride=[
                {"name": "IMAGE_TAG", "value": tag, "type": "PLAINTEXT"},
                {"name": "FLAVOUR", "value": flavour, "type": "PLAINTEXT"},
            ],
        )["build"]
        build_id = started["id"]
        echo(f"started CodeBuild build {build_id} for {uri}")
        final = follow_build(
            clients.codebuild, clients.logs, stack, build_id, echo, poll_s, timeout_s
        )
        if final["buildStatus"] != "SUCCEEDED":
            raise ImageError(f"build {build_id} {final['buildStatus']}: {failure_reason(final)}")
        if not image_exists(clients.ecr, stack.repository, tag):
            raise ImageError(f"build {build_id} succeeded but {uri} is not in the repository")
        if recorded_uri(clients.ssm, stack.parameter) != uri:
            raise ImageError(
                f"build {build_id} succeeded but did not record {uri} in {stack.parameter} "
                "(does buildspec.yml still end with `aws ssm put-parameter`?)"
            )
        echo(f"built {uri}; recorded in {stack.parameter}")
        return BuildResult(uri, "built", build_id)

    return build_unless_exists(stack, context, flavour, clients, echo, build)


def follow_build(
    codebuild: Any,
    logs: Any,
    stack: ImageStack,
    build_id: str,
    echo: Echo,
    poll_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    """Poll the build until it ends, echoing phase changes and new log lines; returns the build."""
    started = time.monotonic()
    phase, tail = None, None
    while True:
        build = codebuild.batch_get_builds(ids=[build_id])["builds"][0]
        if build.get("currentPhase") != phase:
            phase = build.get("currentPhase")
            echo(f"[{time.monotonic() - started:5.0f} s] phase {phase}")
        if tail is None:
            tail = _log_tail(logs, stack, build)
        for line in tail.read_new():
            echo(f"  | {line}")
        if build.get("buildStatus", "IN_PROGRESS") != "IN_PROGRESS":
            for line in tail.read_new():  # what the build wrote after the last poll
                echo(f"  | {line}")
            return dict(build)
        if time.monotonic() - started + poll_s > timeout_s:
            raise ImageError(
                f"build {build_id} still {phase} after {timeout_s:.0f} s; it goes on in CodeBuild "
                f"(log group {stack.log_group}); stop it with `aws codebuild stop-build --id {build_id}`"
            )
        time.sleep(poll_s)


def _log_tail(logs: Any, stack: ImageStack, build: Mapping[str, Any]) -> LogTail:
    """The build's log stream: as the build reports it, else CodeBuild's naming (the build id's
    UUID in the project's group), which is what it uses when the project names only the group."""
    info = build.get("logs") or {}
    group = info.get("groupName") or stack.log_group
    stream = info.get("streamName") or str(build["id"]).rsplit(":", 1)[-1]
    return LogTail(logs, group, stream)


def failure_reason(build: Mapping[str, Any]) -> str:
    """The first failed phase and its messages, or a pointer to the log."""
    for phase in build.get("phases") or []:
        if phase.get("phaseStatus") not in (None, "SUCCEEDED"):
            messages = "; ".join(
                c.get("message", "") for c in phase.get("contexts") or [] if c.get("message")
            )
            return f"phase {phase['phaseType']} {phase['phaseStatus']}" + (
                f": {messages}" if messages else ""
            )
    return f"no failed phase reported; see the build log ({build.get('logs', {}).get('deepLink', 'CodeBuild console')})"
