"""The local services' definitions: SeaweedFS (S3) and an MLflow tracking server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.services.process import console_script, http_ok
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
        console_script("weed"),
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
        port_variable="LEPTON_S3_PORT",
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
    }
    url = f"http://{settings.host}:{settings.mlflow_port}"
    return Service(
        name="mlflow",
        port=settings.mlflow_port,
        url=url,
        command=cmd,
        env=env,
        marker="mlflow",
        health=lambda: http_ok(url + "/health"),
        port_variable="LEPTON_MLFLOW_PORT",
    )


def managed_services(settings: Settings) -> list[Service]:
    """Services `up` starts, in start order (MLflow stores artifacts in S3)."""
    return [seaweedfs(settings), mlflow_server(settings)]
