"""Deploy locally: an Approved MLflow model version served by `inference.server` on
127.0.0.1 (the endpoint's pid and log live with the local services')."""

from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.deploy.messages import PENDING_MESSAGE, REJECTED_MESSAGE, DeployError, Printer, say
from pipelines.imports import SOURCE_ROOT
from pipelines.services import process
from pipelines.services.control import ENDPOINT_MARKER, ENDPOINT_SERVICE
from pipelines.settings import Settings

DEPLOYED_FILE = "deployed.json"


def endpoint_dir(settings: Settings) -> Path:
    return settings.state_dir / "endpoint"


def deployed_info(settings: Settings) -> dict[str, Any] | None:
    """What the local endpoint serves (written at deploy time), or None if nothing is running."""
    path = endpoint_dir(settings) / DEPLOYED_FILE
    if process.running_pid(settings, ENDPOINT_SERVICE, ENDPOINT_MARKER) is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stop_local_endpoint(settings: Settings, out: Printer = say) -> bool:
    """Stop the local endpoint if one is running; returns whether one was stopped."""

    (endpoint_dir(settings) / DEPLOYED_FILE).unlink(missing_ok=True)
    return process.stop(settings, ENDPOINT_SERVICE, ENDPOINT_MARKER, out=out)


def serve_local(
    settings: Settings,
    model_dir: Path,
    info: dict[str, Any],
    timeout_s: float = 120.0,
    out: Printer = say,
) -> str:
    """(Re)start the local endpoint on ``model_dir``; wait for /ping; returns its URL."""

    stop_local_endpoint(settings, out=out)
    if not process.port_free(settings.host, settings.endpoint_port):
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
    # The model's own serving code (model.tar.gz code/, as the image's `serve` uses it), else
    # this code tree's (a model exported before the artifact carried its server).
    code = model_dir / "code" if (model_dir / "code" / "inference").is_dir() else SOURCE_ROOT
    env = {"PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
    pid = process.start_process(settings, ENDPOINT_SERVICE, command, env, cwd=model_dir)
    log = process.log_path(settings, ENDPOINT_SERVICE)
    out(f"endpoint starting (pid {pid}), log {log}")
    deadline = time.monotonic() + timeout_s
    while not process.http_ok(settings.endpoint_url + "/ping"):
        alive = process.alive(pid)
        if not alive or time.monotonic() > deadline:
            process.stop(settings, ENDPOINT_SERVICE, ENDPOINT_MARKER, out=out)
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
    settings: Settings, ref: str, timeout_s: float = 120.0, out: Printer = say
) -> str | None:
    """Deploy an MLflow model version locally if it is Approved; returns the URL, else None."""
    from pipelines.register import registry

    version = registry.resolve_version(settings, ref)
    # the approval of the model that is deployed: the reference's own, whatever the default
    owner = settings.with_overrides(registered_model_name=version.name)
    status = registry.approval_status(owner, version.version)
    if status == registry.REJECTED:
        out(f"{version.uri} is Rejected; {REJECTED_MESSAGE}")
        return None
    if status != registry.APPROVED:
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
