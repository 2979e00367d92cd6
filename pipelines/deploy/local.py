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


def _supports(code: Path, flag: str) -> bool:
    """The serving code (the model's own, possibly older) knows this server flag."""
    server = code / "inference" / "server.py"
    return server.is_file() and f'"{flag}"' in server.read_text(encoding="utf-8")


def _capture_flags(settings: Settings, folder: Path, code: Path) -> list[str]:
    """Data capture (LEPTON_CAPTURE_PERCENT) to the local S3; its keys go in a private file,
    never the endpoint's environment."""
    if settings.capture_percent <= 0:
        return []
    if not _supports(code, "--capture-uri"):
        say("note: this model's serving code predates data capture; serving without it")
        return []
    keys = {**settings.s3_client_kwargs(), "region": settings.region}
    path = folder / "capture-credentials.json"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(keys))
    return [
        "--capture-uri",
        settings.capture_uri,
        "--capture-percent",
        str(settings.capture_percent),
        "--endpoint-name",
        settings.endpoint_name or "lepton-classifier",
        "--capture-credentials",
        str(path),
    ]


def _wait_ready(pid: int, ready: Path, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready.is_file():
        if not process.alive(pid):
            raise DeployError(f"the new endpoint exited before serving; see {log}")
        if time.monotonic() > deadline:
            raise DeployError(f"the new endpoint did not serve within {timeout_s:.0f} s; see {log}")
        time.sleep(0.1)


def serve_local(
    settings: Settings,
    model_dir: Path,
    info: dict[str, Any],
    timeout_s: float = 120.0,
    out: Printer = say,
) -> str:
    """Serve ``model_dir`` on the endpoint port; returns its URL.

    Blue/green: the new server starts beside the running one on the same port (SO_REUSEPORT),
    and only once it serves is the old one stopped (gracefully: requests in flight finish). If
    the new one fails, it is stopped, the old one keeps serving, and DeployError says why."""
    # The model's own serving code (model.tar.gz code/, as the image's `serve` uses it), else
    # this code tree's (a model exported before the artifact carried its server).
    code = model_dir / "code" if (model_dir / "code" / "inference").is_dir() else SOURCE_ROOT
    old = process.running_pid(settings, ENDPOINT_SERVICE, ENDPOINT_MARKER)
    side_by_side = old is not None and _supports(code, "--reuse-port") and _reuses_port(settings)
    if old is not None and not side_by_side:
        out("the running endpoint cannot share its port: stopping it first")
        stop_local_endpoint(settings, out=out)
        old = None
    if old is None and not process.port_free(settings.host, settings.endpoint_port):
        raise DeployError(
            f"port {settings.endpoint_port} on {settings.host} is taken by another process; "
            "stop it or choose another port (LEPTON_ENDPOINT_PORT)"
        )
    folder = endpoint_dir(settings)
    ready = folder / "ready"
    ready.unlink(missing_ok=True)
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
    if _supports(code, "--reuse-port"):
        command += ["--reuse-port", "--ready-file", str(ready)]
    command += _capture_flags(settings, folder, code)
    env = {"PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
    pid = process.start_process(settings, ENDPOINT_SERVICE, command, env, cwd=model_dir)
    log = process.log_path(settings, ENDPOINT_SERVICE)
    out(f"endpoint starting (pid {pid}), log {log}")
    try:
        if "--ready-file" in command:
            _wait_ready(pid, ready, timeout_s, log)
        deadline = time.monotonic() + timeout_s
        while not process.http_ok(settings.endpoint_url + "/ping"):
            if not process.alive(pid) or time.monotonic() > deadline:
                raise DeployError(f"the new endpoint does not answer /ping; see {log}")
            time.sleep(0.1)
    except DeployError:
        process.terminate(pid)
        if old is not None:  # the old one never stopped: it is still what the port serves
            process.record_pid(settings, ENDPOINT_SERVICE, old)
            out(f"the old endpoint (pid {old}) keeps serving")
        raise
    if old is not None:
        out(f"new endpoint serving; stopping the old one (pid {old})")
        time.sleep(0.5)  # new connections go to the new server; the old one's queue empties
        process.terminate(old)
    record = {
        **info,
        "url": settings.endpoint_url,
        "pid": pid,
        "model_dir": str(model_dir),
        "reuse_port": "--reuse-port" in command,
        "deployed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / DEPLOYED_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return settings.endpoint_url


def _reuses_port(settings: Settings) -> bool:
    """The running endpoint was started able to share its port."""
    try:
        doc = json.loads((endpoint_dir(settings) / DEPLOYED_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(doc.get("reuse_port"))


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
    models = base / "models"
    model_dir = models / f"{version.name}-{version.version}-{time.time_ns()}"
    models.mkdir(parents=True, exist_ok=True)
    out(f"downloading {version.uri}")
    registry.download_model(settings, version.uri, model_dir)
    try:
        url = serve_local(
            settings,
            model_dir,
            {"name": version.name, "version": version.version, "uri": version.uri},
            timeout_s,
            out,
        )
    except DeployError:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise
    for stale in models.iterdir():  # earlier models: no server uses them any more
        if stale != model_dir:
            shutil.rmtree(stale, ignore_errors=True)
    out(f"{version.uri} serving at {url} (POST {url}/invocations)")
    return url
