"""The local services' definitions: SeaweedFS (S3) and an MLflow tracking server."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.runner.fetch import local_s3_socket
from pipelines.services import netns
from pipelines.services.process import console_script, http_ok
from pipelines.services.seaweedfs_security import ensure_security, security_dir
from pipelines.settings import Settings


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    url: str  # what users talk to
    command: list[str]
    env: dict[str, str] = field(repr=False)
    marker: str  # a word that must appear in the process's command line (pid reuse guard)
    health: Callable[[], bool] = field(repr=False, compare=False)
    port_variable: str = ""  # the environment variable that moves it to another port
    data: tuple[Path, ...] = ()  # what it writes in the state folder (kept private, 0700)
    cwd: Path | None = None  # its working directory
    note: str = ""  # printed when it starts
    leftovers: tuple[Path, ...] = ()  # what it leaves behind when stopped: `down` removes it


TRACKING_SERVICE = "mlflow"  # the MLflow server's service name (pid file, log, `up`)


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
    config_dir = ensure_security(settings)
    # weed runs in a network namespace of its own where the machine allows it (netns): then
    # only the S3 port is reachable from the host, forwarded into it. Every port weed mini
    # opens is derived from the S3 port, so two state folders with different LEPTON_S3_PORT
    # never collide (gRPC ports are http + 10000 by SeaweedFS rule) where it runs unisolated.
    # Only S3 answers without the keys in config_dir/security.toml (seaweedfs_security);
    # -disableHttp removes the master's and filer's HTTP APIs, which no key can close (the
    # master's /dir/assign hands out write tokens) and which S3 does not use; the Iceberg and
    # Lance catalogs (0: not started) answered without credentials and are not used.
    cmd = [
        console_script("weed"),
        f"-config_dir={config_dir}",
        "mini",
        f"-dir={data_dir}",
        f"-ip={settings.host}",
        f"-ip.bind={settings.host}",
        f"-s3.port={p}",
        f"-s3.localSocket={local_s3_socket(p)}",  # S3 on a Unix socket too: fetch.py uses it
        f"-master.port={p + 1}",
        f"-volume.port={p + 2}",
        f"-filer.port={p + 3}",
        f"-admin.port={p + 4}",
        f"-webdav.port={p + 5}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        # one master, no peers: its raft heartbeat every 300 ms (the default) kept an idle weed
        # at 4.5-4.9% of a core; every 3 s, 0.4-0.5%, S3 healthy as soon after start
        "-master.heartbeatInterval=3s",
        "-disableHttp",
    ]
    note = "its other ports reachable on the host (no user namespaces here)"
    if not settings.s3_isolation:
        note = "its other ports reachable on the host (LEPTON_S3_ISOLATION=0)"
    elif netns.available():
        forward = ["--host", settings.host, "--port", str(p), "--"]
        cmd = [sys.executable, "-m", "pipelines.services.netns", *forward, *cmd]
        note = "in a private network namespace: only S3 is reachable"
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
        port_variable="LEPTON_S3_PORT",
        data=(data_dir, security_dir(settings)),
        cwd=config_dir,  # weed also reads ./security.toml, ./filer.toml...: only ours
        note=note,
        leftovers=(Path(local_s3_socket(p)),),  # weed removes its other sockets, not this one
    )


def mlflow_server(settings: Settings) -> Service:
    creds = settings.credentials(create=True)
    assert creds is not None
    db = settings.state_dir / "mlflow" / "mlflow.db"
    cmd = [
        console_script("mlflow"),
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
        # MLflow 3 starts a job runner (huey: 7 worker processes) for server-side jobs
        # (online scoring, trace archival) the project never uses
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",  # no calls out to MLflow's telemetry service
    }
    url = f"http://{settings.host}:{settings.mlflow_port}"
    return Service(
        name=TRACKING_SERVICE,
        port=settings.mlflow_port,
        url=url,
        command=cmd,
        env=env,
        marker="mlflow",
        health=lambda: http_ok(url + "/health"),
        port_variable="LEPTON_MLFLOW_PORT",
        data=(db.parent,),
    )


def managed_services(settings: Settings) -> list[Service]:
    """Services `up` starts, in start order (MLflow stores artifacts in S3)."""
    return [seaweedfs(settings), mlflow_server(settings)]
