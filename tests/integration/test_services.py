"""The local stack for real: SeaweedFS and MLflow processes, restarts, credentials, ports,
the state folder's permissions, concurrent `up`. (Port security: test_services_security.py.)"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import mlflow
import psutil
import pytest
from botocore.exceptions import ClientError

from pipelines.runner.fetch import local_s3_socket
from pipelines.services import control as services
from pipelines.services import netns
from pipelines.settings import Credentials, Settings
from pipelines.storage import s3_client, s3_filesystem
from tests.fixtures_model import REPO_ROOT
from tests.fixtures_services import make_settings


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture()
def private_stack(tmp_path: Path):
    settings = make_settings(tmp_path / "state")
    yield settings
    services.down(settings, out=_quiet)


def _loose(folder: Path) -> list[str]:
    """Paths under ``folder`` that its group or others may read, write or enter."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if not p.is_symlink() and p.stat().st_mode & 0o077
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_restart_keeps_objects_and_mlflow_runs(private_stack: Settings, tmp_path: Path) -> None:
    """...and keeps the state folder private: 0700, files 0600, also those an older version
    left readable."""
    settings = private_stack
    state = settings.state_dir
    (state / "logs").mkdir(parents=True)  # what earlier versions left: 0755 / 0644
    (state / "logs" / "s3.log").write_text("an old log\n")
    os.chmod(state, 0o755)
    os.chmod(state / "logs" / "s3.log", 0o644)
    services.up(settings, out=_quiet)
    assert all(row.healthy for row in services.status(settings))
    assert _mode(state) == 0o700
    assert _loose(state) == []

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

    # while running, the services create files with umask 077, except that SeaweedFS sets
    # its volume info files (.vif) to 0644 itself; the 0700 folders above them keep them
    # private, and the next `up` takes those bits off too
    assert all(Path(p).suffix == ".vif" for p in _loose(state)), _loose(state)
    assert _mode(state / "mlflow" / "mlflow.db") == 0o600

    socket_path = Path(local_s3_socket(settings.s3_port))
    assert socket_path.is_socket()
    services.down(settings, out=_quiet)
    assert not any(row.healthy for row in services.status(settings))
    assert not socket_path.exists()  # weed leaves its S3 socket behind; `down` removes it
    services.up(settings, out=_quiet)
    assert _mode(state) == 0o700 and _loose(state) == []

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


def _service_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEPTON_", "MLFLOW_"))}
    env.update(
        LEPTON_STATE_DIR=str(settings.state_dir),
        LEPTON_S3_PORT=str(settings.s3_port),
        LEPTON_MLFLOW_PORT=str(settings.mlflow_port),
        LEPTON_ENDPOINT_PORT=str(settings.endpoint_port),
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


def _processes_of(settings: Settings) -> dict[str, list[psutil.Process]]:
    """This stack's SeaweedFS and MLflow server processes, found by their command lines."""
    found: dict[str, list[psutil.Process]] = {"weed": [], "mlflow": []}
    data_arg = f"-dir={settings.state_dir / 's3'}"
    db_arg = f"sqlite:///{settings.state_dir / 'mlflow' / 'mlflow.db'}"
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if data_arg in cmdline and Path(cmdline[0]).name == "weed":  # not its netns launcher
            found["weed"].append(proc)
        elif db_arg in cmdline and "server" in cmdline:
            found["mlflow"].append(proc)
    return found


def test_two_concurrent_ups_start_each_service_once(private_stack: Settings) -> None:
    settings = private_stack
    cmd = [sys.executable, "-m", "pipelines.cli", "services", "up"]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=_service_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    both = "\n".join(outputs)
    assert both.count("s3: starting") == 1 and both.count("mlflow: starting") == 1, both
    assert both.count("already running") == 2, both
    found = _processes_of(settings)
    assert [len(found["weed"]), len(found["mlflow"])] == [1, 1], found
    pids = {row.name: row.pid for row in services.status(settings)}
    weed = found["weed"][0]  # recorded: weed, or the launcher of its network namespace
    s3_pid = weed.ppid() if settings.s3_isolation and netns.available() else weed.pid
    assert pids == {"s3": s3_pid, "mlflow": found["mlflow"][0].pid}

    # MLflow's job runner is off: the server is its CLI process and one uvicorn worker, and
    # none of the 1 job runner + 7 huey consumers MLflow 3 starts by default
    tree = [found["mlflow"][0], *found["mlflow"][0].children(recursive=True)]
    cmdlines = [" ".join(p.cmdline()) for p in tree]
    assert not [c for c in cmdlines if "huey" in c or "mlflow.server.jobs" in c], cmdlines
    assert len(tree) == 2 and "uvicorn" in cmdlines[1], cmdlines


def test_a_background_service_is_waited_for_only_when_asked(private_stack: Settings) -> None:
    lines: list[str] = []
    waiters = services.up(private_stack, out=lines.append, background=("mlflow",))
    assert set(waiters) == {"mlflow"}
    assert any(line.startswith("s3: healthy") for line in lines)
    assert not any(line.startswith("mlflow: healthy") for line in lines)  # not waited for
    assert any(line.startswith("mlflow: starting") for line in lines)  # but started
    waiters["mlflow"]()
    assert lines[-1].startswith("mlflow: healthy")
    assert mlflow.MlflowClient(private_stack.tracking_uri).search_experiments() is not None
    waiters["mlflow"]()  # a second call returns at once, printing nothing
    assert (
        lines[-1].startswith("mlflow: healthy") and sum("mlflow: healthy" in x for x in lines) == 1
    )
