"""`lepton image build --docker`: build with a local Docker engine and push to the stack's ECR.

The same context, tag and record as the CodeBuild path (pipelines/aws/image.py), for machines
that have an engine: `docker build` (BuildKit) of the context written to a temporary folder,
`docker login` with a token from ECR's GetAuthorizationToken (given on stdin, never printed or
put on a command line), `docker push`, then the URI goes into the SSM parameter.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.aws.image import (
    BuildResult,
    Echo,
    ImageClients,
    ImageError,
    ImageStack,
    build_unless_exists,
    record_uri,
)
from pipelines.aws.image_context import BuildContext

_ENGINE_CHECK_TIMEOUT_S = 20


class DockerUnavailable(ImageError):
    """No docker command, or no engine answering it."""


def check_engine(docker: str = "docker") -> str:
    """The engine's server version; DockerUnavailable (saying what to do instead) if none answers."""
    hint = "or build in CodeBuild instead: `lepton image build` (without --docker)"
    if shutil.which(docker) is None:
        raise DockerUnavailable(f"no {docker!r} command on PATH: install Docker, {hint}")
    try:
        proc = subprocess.run(
            [docker, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=_ENGINE_CHECK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerUnavailable(
            f"the Docker engine did not answer in {_ENGINE_CHECK_TIMEOUT_S} s; {hint}"
        ) from exc
    if proc.returncode != 0 or not proc.stdout.strip():
        reason = (proc.stderr.strip().splitlines() or ["no server version"])[-1]
        raise DockerUnavailable(
            f"no Docker engine answered `{docker} version` ({reason}): start one (or point "
            f"DOCKER_HOST at one), {hint}"
        )
    return proc.stdout.strip()


def _run(command: Sequence[str], echo: Echo, stdin: str | None = None) -> None:
    """Run a docker command, echoing its output line by line; ImageError if it fails."""
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    with subprocess.Popen(
        list(command),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    ) as proc:
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        assert proc.stdout is not None
        for line in proc.stdout:
            echo(f"  | {line.rstrip()}")
        code = proc.wait()
    if code != 0:
        raise ImageError(f"`{' '.join(command[:2])}` failed with exit code {code}")


def login(ecr: Any, docker: str, echo: Echo) -> None:
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    registry = data["proxyEndpoint"]
    echo(f"logging in to {registry}")
    _run([docker, "login", "--username", user, "--password-stdin", registry], echo, stdin=password)


def build_with_docker(
    stack: ImageStack,
    context: BuildContext,
    flavour: str,
    clients: ImageClients,
    *,
    echo: Echo = print,
    docker: str = "docker",
) -> BuildResult:
    """Build and push `context` as `flavour` with the local engine unless its tag exists."""

    def build(tag: str, uri: str) -> BuildResult:
        echo(f"Docker engine {check_engine(docker)}")
        with tempfile.TemporaryDirectory(prefix="lepton-image-") as tmp:
            folder = context.write_to(Path(tmp))
            echo(f"building {uri}")
            command = [
                docker,
                "build",
                "--build-arg",
                f"FLAVOUR={flavour}",
                "--tag",
                uri,
                str(folder),
            ]
            _run(command, echo)
        login(clients.ecr, docker, echo)
        _run([docker, "push", uri], echo)
        record_uri(clients.ssm, stack.parameter, uri)
        echo(f"pushed {uri}; recorded in {stack.parameter}")
        return BuildResult(uri, "built")

    return build_unless_exists(stack, context, flavour, clients, echo, build)
