"""Local services: SeaweedFS (S3) and an MLflow tracking server, as background processes.

Each service has a pid file and a log file in the state folder. `up` is idempotent, `down` stops
only the processes recorded in pid files (and checks the pid still belongs to that service),
and data stays in the state folder across restarts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pipelines.settings import Settings

Printer = Callable[[str], None]


class ServiceError(RuntimeError):
    """A service could not be started or stopped; the message says why and where to look."""


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    url: str  # what users talk to
    command: list[str]
    env: dict[str, str] = field(repr=False)
    marker: str  # a word that must appear in the process's command line (pid reuse guard)
    health: Callable[[], bool] = field(repr=False, compare=False)


def _bin(name: str) -> str:
    """A console script of this environment (the venv's bin folder first, then PATH)."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"'{name}' not found: run `make setup` (it installs {name})")
    return found


def run_dir(settings: Settings) -> Path:
    return settings.state_dir / "run"


def log_dir(settings: Settings) -> Path:
    return settings.state_dir / "logs"


def pid_path(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.pid"


def log_path(settings: Settings, name: str) -> Path:
    return log_dir(settings) / f"{name}.log"


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _s3_ok(settings: Settings) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    from pipelines.storage import s3_client

    try:
        s3_client(settings).list_buckets()
        return True
    except (BotoCoreError, ClientError, OSError):
        return False


def seaweedfs(settings: Settings) -> Service:
    creds = settings.credentials(create=True)
    assert creds is not None  # local mode always has credentials
    p = settings.s3_port
    data_dir = settings.state_dir / "s3"
    # Every port weed mini opens is derived from the S3 port, so two state folders with
    # different LEPTON_S3_PORT never collide (gRPC ports are http + 10000 by SeaweedFS rule).
    cmd = [
        _bin("weed"),
        "mini",
        f"-dir={data_dir}",
        f"-ip={settings.host}",
        f"-ip.bind={settings.host}",
        f"-s3.port={p}",
        f"-master.port={p + 1}",
        f"-volume.port={p + 2}",
        f"-filer.port={p + 3}",
        f"-admin.port={p + 4}",
        f"-webdav.port={p + 5}",
        f"-s3.port.iceberg={p + 6}",
        f"-s3.port.lance={p + 7}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    env = {
        "AWS_ACCESS_KEY_ID": creds.access_key_id,
        "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
    }
    return Service(
        name="s3",
        port=p,
        url=f"http://{settings.host}:{p}",
        command=cmd,
        env=env,
        marker="weed",
        health=lambda: _s3_ok(settings),
    )


def mlflow_server(settings: Settings) -> Service:
    creds = settings.credentials(create=True)
    assert creds is not None
    db = settings.state_dir / "mlflow" / "mlflow.db"
    cmd = [
        _bin("mlflow"),
        "server",
        "--host",
        settings.host,
        "--port",
        str(settings.mlflow_port),
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        f"s3://{settings.mlflow_bucket}/artifacts",
        "--serve-artifacts",
        "--workers",
        "1",
    ]
    env = {
        # The server alone holds S3 credentials; clients get artifacts through it.
        "MLFLOW_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "AWS_ACCESS_KEY_ID": creds.access_key_id,
        "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
        "AWS_DEFAULT_REGION": settings.region,
        "MLFLOW_ENABLE_WORKSPACES": "false",
    }
    url = f"http://{settings.host}:{settings.mlflow_port}"
    return Service(
        name="mlflow",
        port=settings.mlflow_port,
        url=url,
        command=cmd,
        env=env,
        marker="mlflow",
        health=lambda: _http_ok(url + "/health"),
    )


def managed_services(settings: Settings) -> list[Service]:
    """Services `up` starts, in start order (MLflow stores artifacts in S3)."""
    return [seaweedfs(settings), mlflow_server(settings)]


def running_pid(settings: Settings, name: str, marker: str | None = None) -> int | None:
    """The pid recorded for `name` if that process is alive and still ours, else None."""
    path = pid_path(settings, name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if marker and marker not in " ".join(proc.cmdline()):
            return None  # pid reused by an unrelated process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return pid


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start_process(
    settings: Settings, name: str, command: list[str], env: dict[str, str], cwd: Path | None = None
) -> int:
    """Start a detached background process with a pid file and a log file; return its pid."""
    run_dir(settings).mkdir(parents=True, exist_ok=True)
    log_dir(settings).mkdir(parents=True, exist_ok=True)
    log = open(log_path(settings, name), "ab")  # noqa: SIM115 - handed to the child
    full_env = {**os.environ, **env}
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=cwd,
        start_new_session=True,  # outlives `make`, and our Ctrl+C does not reach it
    )
    log.close()
    pid_path(settings, name).write_text(str(proc.pid))
    return proc.pid


def _wait_healthy(service: Service, settings: Settings, pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.health():
            return
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            raise ServiceError(
                f"{service.name} exited during start-up; see {log_path(settings, service.name)}"
            )
        time.sleep(0.5)
    raise ServiceError(
        f"{service.name} did not become healthy within {timeout_s:.0f} s on {service.url}; "
        f"see {log_path(settings, service.name)}"
    )


def up(settings: Settings, timeout_s: float = 90.0, out: Printer = print) -> None:
    """Start every managed service that is not running; wait for health; create buckets."""
    if settings.mode != "local":
        raise ServiceError("services run only in local mode (LEPTON_MODE=local)")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    for service in managed_services(settings):
        pid = running_pid(settings, service.name, service.marker)
        if pid is not None:
            out(f"{service.name}: already running (pid {pid}) on {service.url}")
        else:
            if not port_free(settings.host, service.port):
                raise ServiceError(
                    f"{service.name}: port {service.port} on {settings.host} is taken by another "
                    f"process; stop it or choose another port "
                    f"(LEPTON_{'S3' if service.name == 's3' else 'MLFLOW'}_PORT)"
                )
            pid = start_process(settings, service.name, service.command, service.env)
            out(f"{service.name}: starting (pid {pid}), log {log_path(settings, service.name)}")
        try:
            _wait_healthy(service, settings, pid, timeout_s)
        except ServiceError:
            _terminate(pid)
            pid_path(settings, service.name).unlink(missing_ok=True)
            raise
        if service.name == "s3":
            from pipelines.storage import ensure_buckets

            ensure_buckets(settings)
        out(f"{service.name}: healthy at {service.url}")


def _terminate(pid: int, grace_s: float = 15.0) -> None:
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
        os.killpg(pid, signal.SIGTERM)  # the whole session: MLflow runs uvicorn workers
    except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
        return
    _, alive = psutil.wait_procs([proc, *children], timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def stop(settings: Settings, name: str, marker: str | None = None, out: Printer = print) -> bool:
    """Stop one service recorded in a pid file. Returns whether something was stopped."""
    pid = running_pid(settings, name, marker)
    pid_path(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    _terminate(pid)
    out(f"{name}: stopped (pid {pid})")
    return True


def down(settings: Settings, out: Printer = print) -> None:
    """Stop the endpoint (if deployed) and every managed service, newest first; keep all data."""
    names = [("endpoint", "inference")] + [
        (s.name, s.marker) for s in reversed(managed_services(settings))
    ]
    stopped = [stop(settings, name, marker, out) for name, marker in names]
    if not any(stopped):
        out("nothing was running")


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    pid: int | None
    healthy: bool


def status(settings: Settings) -> list[ServiceStatus]:
    rows = []
    for service in managed_services(settings):
        pid = running_pid(settings, service.name, service.marker)
        rows.append(ServiceStatus(service.name, service.url, pid, service.health()))
    endpoint_pid = running_pid(settings, "endpoint", "inference")
    if endpoint_pid is not None:
        healthy = _http_ok(settings.endpoint_url + "/ping")
        rows.append(ServiceStatus("endpoint", settings.endpoint_url, endpoint_pid, healthy))
    return rows
