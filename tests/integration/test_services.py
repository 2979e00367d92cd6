"""The local stack for real: SeaweedFS and MLflow processes, restarts, credentials, ports."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import mlflow
import pytest
from botocore.exceptions import ClientError

from pipelines.services import control as services
from pipelines.settings import Credentials, Settings
from pipelines.storage import s3_client, s3_filesystem
from tests.fixtures_services import make_settings


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture()
def private_stack(tmp_path: Path):
    settings = make_settings(tmp_path / "state")
    yield settings
    services.down(settings, out=_quiet)


def test_restart_keeps_objects_and_mlflow_runs(private_stack: Settings, tmp_path: Path) -> None:
    settings = private_stack
    services.up(settings, out=_quiet)
    assert all(row.healthy for row in services.status(settings))

    s3_client(settings).put_object(
        Bucket=settings.data_bucket, Key="keep/me.txt", Body=b"still here"
    )
    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment_id = mlflow.set_experiment("restart-test").experiment_id
    artifact = tmp_path / "note.txt"
    artifact.write_text("artifact bytes")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("accuracy", 0.5)
        mlflow.log_artifact(str(artifact))

    # The artifact went through the MLflow server into the SeaweedFS bucket.
    keys = [
        o["Key"]
        for o in s3_client(settings)
        .list_objects_v2(Bucket=settings.mlflow_bucket)
        .get("Contents", [])
    ]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys
    body = (
        s3_client(settings)
        .get_object(
            Bucket=settings.mlflow_bucket, Key=next(k for k in keys if k.endswith("note.txt"))
        )["Body"]
        .read()
    )
    assert body == b"artifact bytes"

    services.down(settings, out=_quiet)
    assert not any(row.healthy for row in services.status(settings))
    services.up(settings, out=_quiet)

    got = s3_client(settings).get_object(Bucket=settings.data_bucket, Key="keep/me.txt")
    assert got["Body"].read() == b"still here"
    client = mlflow.MlflowClient(settings.tracking_uri)
    again = client.get_run(run.info.run_id)
    assert again.data.metrics["accuracy"] == 0.5
    downloaded = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "dl"))
    assert Path(downloaded).read_text() == "artifact bytes"


def test_up_is_idempotent_and_credentials_are_private(stack_settings: Settings) -> None:
    before = {r.name: r.pid for r in services.status(stack_settings)}
    lines: list[str] = []
    services.up(stack_settings, out=lines.append)
    after = {r.name: r.pid for r in services.status(stack_settings)}
    assert before == after
    assert sum("already running" in line for line in lines) == 2
    mode = stat.S_IMODE(stack_settings.credentials_path.stat().st_mode)
    assert mode == 0o600
    creds = stack_settings.credentials()
    assert creds is not None
    assert creds.secret_access_key not in repr(creds)
    assert creds.secret_access_key not in "\n".join(lines)


def test_s3_refuses_wrong_credentials(stack_settings: Settings, tmp_path: Path) -> None:
    bad = stack_settings.with_overrides(mode="aws", env_credentials=Credentials("nope", "wrong"))
    bad = bad.with_overrides(s3_endpoint_url_override=stack_settings.s3_endpoint_url)
    with pytest.raises(ClientError) as err:
        s3_client(bad).list_objects_v2(Bucket=stack_settings.data_bucket)
    assert err.value.response["Error"]["Code"] in {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
    }


def test_boto3_and_s3fs_round_trip(stack_settings: Settings) -> None:
    client = s3_client(stack_settings)
    bucket = stack_settings.data_bucket
    client.put_object(Bucket=bucket, Key="rt/a.bin", Body=b"\x00\x01boto")
    fs = s3_filesystem(stack_settings)
    with fs.open(f"{bucket}/rt/b.bin", "wb") as fh:
        fh.write(b"s3fs bytes")
    assert fs.cat(f"{bucket}/rt/a.bin") == b"\x00\x01boto"
    assert client.get_object(Bucket=bucket, Key="rt/b.bin")["Body"].read() == b"s3fs bytes"
    listed = sorted(
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="rt/")["Contents"]
    )
    assert listed == ["rt/a.bin", "rt/b.bin"]
    assert sorted(fs.ls(f"{bucket}/rt/")) == [f"{bucket}/rt/a.bin", f"{bucket}/rt/b.bin"]


def test_taken_port_gives_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state")
    blocker = socket.socket()
    blocker.bind((settings.host, settings.s3_port))
    blocker.listen(1)
    try:
        with pytest.raises(services.ServiceError, match=rf"port {settings.s3_port}.*taken"):
            services.up(settings, out=_quiet)
    finally:
        blocker.close()
        services.down(settings, out=_quiet)
