"""SageMaker Processing entry point of the deploy step: serve an approved model, never another.

    python pipelines/steps/deploy.py --model-package-arn REF --endpoint-name NAME \
        --instance-type ml.m5.large [--instance-count 1] [--role-arn ARN] [--wait]

``REF`` decides where the endpoint lives:
- ``arn:aws:sagemaker:...:model-package/...`` (AWS): deployed only if the package is Approved:
  a SageMaker model, an endpoint config, then the endpoint is created or updated (boto3).
- ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (local run): deployed only if the MLflow
  version is Approved: the model is downloaded into ``<state>/endpoint/model``, the running
  local endpoint is stopped and ``python -m inference.server`` started on
  ``127.0.0.1:<endpoint port>``; the step waits until ``/ping`` answers.

A version pending approval is not an error: the step prints ``pending approval: not deployed``
and exits 0 (approve it with ``lepton model approve VERSION``). A Rejected one is never deployed.
Exit status: 0 deployed or deliberately not deployed, 2 invalid reference, 1 other failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a plain script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipelines.registry import RegistryError  # noqa: E402
from pipelines.settings import Settings  # noqa: E402

Printer = Callable[[str], None]
REPO_ROOT = Path(__file__).resolve().parents[2]
ENDPOINT_SERVICE = "endpoint"  # pid/log name in pipelines.services
ENDPOINT_MARKER = "inference"  # must appear in the endpoint's command line (pid reuse guard)
DEPLOYED_FILE = "deployed.json"
PENDING_MESSAGE = "pending approval: not deployed"
REJECTED_MESSAGE = "rejected: not deployed"


class DeployError(RuntimeError):
    """The endpoint could not be (re)deployed; the message says why and where to look."""


def _say(message: str) -> None:
    print(f"deploy: {message}", flush=True)


# ------------------------------------------------------------------------------------ local
def endpoint_dir(settings: Settings) -> Path:
    return settings.state_dir / "endpoint"


def deployed_info(settings: Settings) -> dict[str, Any] | None:
    """What the local endpoint serves (written at deploy time), or None if nothing is running."""
    from pipelines import services

    path = endpoint_dir(settings) / DEPLOYED_FILE
    if services.running_pid(settings, ENDPOINT_SERVICE, ENDPOINT_MARKER) is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ping(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/ping", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop_local_endpoint(settings: Settings, out: Printer = _say) -> bool:
    """Stop the local endpoint if one is running; returns whether one was stopped."""
    from pipelines import services

    (endpoint_dir(settings) / DEPLOYED_FILE).unlink(missing_ok=True)
    return services.stop(settings, ENDPOINT_SERVICE, ENDPOINT_MARKER, out=out)


def serve_local(
    settings: Settings,
    model_dir: Path,
    info: dict[str, Any],
    timeout_s: float = 120.0,
    out: Printer = _say,
) -> str:
    """(Re)start the local endpoint on ``model_dir``; wait for /ping; returns its URL."""
    import psutil

    from pipelines import services

    stop_local_endpoint(settings, out=out)
    if not services.port_free(settings.host, settings.endpoint_port):
        raise DeployError(
            f"port {settings.endpoint_port} on {settings.host} is taken by another process; "
            "stop it or choose another port (LEPTON_ENDPOINT_PORT)"
        )
    command = [
        sys.executable,
        "-m",
        "inference.server",
        "--model",
        str(model_dir),
        "--host",
        settings.host,
        "--port",
        str(settings.endpoint_port),
    ]
    env = {"PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    pid = services.start_process(settings, ENDPOINT_SERVICE, command, env, cwd=REPO_ROOT)
    log = services.log_path(settings, ENDPOINT_SERVICE)
    out(f"endpoint starting (pid {pid}), log {log}")
    deadline = time.monotonic() + timeout_s
    while not _ping(settings.endpoint_url):
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        if not alive or time.monotonic() > deadline:
            services.stop(settings, ENDPOINT_SERVICE, ENDPOINT_MARKER, out=out)
            why = "exited" if not alive else f"did not answer /ping within {timeout_s:.0f} s"
            raise DeployError(f"endpoint {why}; see {log}")
        time.sleep(0.25)
    record = {
        **info,
        "url": settings.endpoint_url,
        "pid": pid,
        "deployed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (endpoint_dir(settings) / DEPLOYED_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return settings.endpoint_url


def deploy_local(
    settings: Settings, ref: str, timeout_s: float = 120.0, out: Printer = _say
) -> str | None:
    """Deploy an MLflow model version locally if it is Approved; returns the URL, else None."""
    from pipelines import registry

    version = registry.resolve_version(settings, ref)
    status = registry.approval_status(settings, version.version)
    if status == registry.REJECTED:
        out(f"{version.uri} is Rejected; {REJECTED_MESSAGE}")
        return None
    if not registry.is_deployable(settings, version.version):
        out(f"{version.uri} is {status}; {PENDING_MESSAGE}")
        return None
    base = endpoint_dir(settings)
    incoming, model_dir = base / "model.incoming", base / "model"
    shutil.rmtree(incoming, ignore_errors=True)
    out(f"downloading {version.uri}")
    registry.download_model(settings, version.uri, incoming)
    stop_local_endpoint(settings, out=out)  # the old model's files are about to be replaced
    shutil.rmtree(model_dir, ignore_errors=True)
    incoming.rename(model_dir)
    url = serve_local(
        settings,
        model_dir,
        {"name": version.name, "version": version.version, "uri": version.uri},
        timeout_s,
        out,
    )
    out(f"{version.uri} serving at {url} (POST {url}/invocations)")
    return url


# -------------------------------------------------------------------------------------- AWS
def _resource_name(*parts: str) -> str:
    """A SageMaker resource name (<= 63 chars of [a-zA-Z0-9-]) unique per second."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = "-".join(p for p in parts if p).replace("_", "-")
    return f"{base[: 63 - len(stamp) - 1]}-{stamp}"


def deploy_sagemaker(
    client: Any,
    package_arn: str,
    endpoint_name: str,
    instance_type: str,
    instance_count: int = 1,
    role_arn: str | None = None,
    wait: bool = False,
    out: Printer = _say,
) -> str | None:
    """Deploy an Approved model package to a real-time endpoint; returns its name, else None."""
    from botocore.exceptions import ClientError

    from pipelines import sagemaker_registry as smr

    status = smr.approval_status(client, package_arn)
    if status == smr.REJECTED:
        out(f"{package_arn} is Rejected; {REJECTED_MESSAGE}")
        return None
    if status != smr.APPROVED:
        out(f"{package_arn} is {status}; {PENDING_MESSAGE}")
        return None
    if not role_arn:
        raise DeployError("--role-arn is required to create a SageMaker model")
    package_version = package_arn.rsplit("/", 1)[-1]
    model_name = _resource_name(endpoint_name, package_version)
    client.create_model(
        ModelName=model_name,
        ExecutionRoleArn=role_arn,
        PrimaryContainer={"ModelPackageName": package_arn},
    )
    config_name = model_name
    client.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model_name,
                "InstanceType": instance_type,
                "InitialInstanceCount": int(instance_count),
            }
        ],
    )
    try:
        client.describe_endpoint(EndpointName=endpoint_name)
        exists = True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ValidationException":
            raise
        exists = False
    if exists:
        client.update_endpoint(EndpointName=endpoint_name, EndpointConfigName=config_name)
        out(f"updating endpoint {endpoint_name} to {package_arn} (config {config_name})")
    else:
        client.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=config_name)
        out(f"creating endpoint {endpoint_name} for {package_arn} (config {config_name})")
    if wait:
        client.get_waiter("endpoint_in_service").wait(EndpointName=endpoint_name)
        out(f"endpoint {endpoint_name} is InService")
    return endpoint_name


# ------------------------------------------------------------------------------ entry point
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy", description="Deploy an approved model.")
    p.add_argument(
        "--model-package-arn",
        required=True,
        help="SageMaker model package ARN, or models:/NAME/VERSION (local)",
    )
    p.add_argument("--endpoint-name", default="lepton-classifier")
    p.add_argument("--instance-type", default="ml.m5.large")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--role-arn", default=None, help="execution role of the SageMaker model")
    p.add_argument("--wait", action="store_true", help="AWS: wait until InService")
    p.add_argument("--timeout", type=float, default=120.0, help="local: seconds to wait for /ping")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ref = str(args.model_package_arn).strip()
    try:
        if ref.startswith("arn:"):
            import boto3

            deploy_sagemaker(
                boto3.client("sagemaker"),
                ref,
                args.endpoint_name,
                args.instance_type,
                args.instance_count,
                args.role_arn,
                args.wait,
            )
        elif ref.startswith("models:/"):
            from pipelines.settings import load_settings

            deploy_local(load_settings(), ref, timeout_s=args.timeout)
        else:
            print(
                f"deploy: error: expected an arn:... or models:/... reference, got {ref!r}",
                file=sys.stderr,
            )
            return 2
    except DeployError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
