"""The one place in `pipelines` that reads the environment.

Everything else takes a `Settings` object. Two modes:

- ``local`` (default): S3 is the SeaweedFS server this project starts on 127.0.0.1, with
  credentials generated on first start and kept in the state folder (folder 0700, file 0600);
  tracking is the local MLflow server.
- ``aws``: the default boto3 credential chain and region; ``AWS_ENDPOINT_URL`` /
  ``AWS_ENDPOINT_URL_S3`` are honoured (moto, LocalStack, a VPC endpoint).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:  # never print the secret, not even by accident in a traceback
        return f"Credentials(access_key_id={mask(self.access_key_id)!r}, secret_access_key='***')"


def mask(value: str) -> str:
    """Show just enough of a credential to tell two apart."""
    return value[:4] + "…" if len(value) > 4 else "***"


@dataclass(frozen=True)
class Settings:
    """Endpoints, ports, buckets and region for one project state folder."""

    mode: str = "local"  # "local" or "aws"
    state_dir: Path = Path(".lepton")
    region: str = "us-east-1"
    host: str = "127.0.0.1"  # local services bind here and nowhere else
    s3_port: int = 8333
    mlflow_port: int = 5001  # moto's server owns 5000
    endpoint_port: int = 8080  # SageMaker container contract
    capture_percent: float = 0.0  # LEPTON_CAPTURE_PERCENT: requests the local endpoint captures
    # LEPTON_S3_ISOLATION=0: SeaweedFS without its own network namespace (services.netns)
    s3_isolation: bool = True
    s3_endpoint_url_override: str | None = None
    tracking_uri_override: str | None = None
    data_bucket: str = "lepton-data"
    artifact_bucket: str = "lepton-artifacts"
    mlflow_bucket: str = "lepton-mlflow"
    experiment_name: str = "lepton"
    registered_model_name: str = "lepton-classifier"
    model_name_given: bool = False  # LEPTON_MODEL_NAME was set (a run keeps it, whatever the data)
    # AWS side (exported by `lepton infra outputs --format env`); None -> not configured
    sagemaker_role_arn: str | None = None  # LEPTON_SAGEMAKER_ROLE_ARN: the execution role
    pipeline_name: str | None = None  # LEPTON_PIPELINE_NAME
    endpoint_name: str | None = None  # LEPTON_ENDPOINT_NAME
    raw_data_uri: str | None = None  # LEPTON_RAW_DATA_URI: default InputDataUri on AWS
    image_uri: str | None = None  # LEPTON_IMAGE_URI: the image every step and the endpoint run
    image_parameter: str | None = None  # LEPTON_IMAGE_PARAMETER: SSM parameter that records it
    # LEPTON_ENV_DIR: the local runner's step environments (one per requirements digest)
    env_root: Path = Path.home() / ".cache" / "lepton" / "envs"
    debug: bool = False  # LEPTON_DEBUG=1: full tracebacks from the CLI
    env_credentials: Credentials | None = field(default=None, repr=False)

    @property
    def capture_uri(self) -> str:
        """Where endpoint data capture goes (the stack's DeployFunction uses the same prefix)."""
        return f"s3://{self.artifact_bucket}/capture"

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.data_bucket, self.artifact_bucket, self.mlflow_bucket)

    @property
    def s3_endpoint_url(self) -> str | None:
        if self.s3_endpoint_url_override:
            return self.s3_endpoint_url_override
        if self.mode == "local":
            return f"http://{self.host}:{self.s3_port}"
        return None  # AWS default endpoint

    @property
    def tracking_uri(self) -> str:
        if self.tracking_uri_override:
            return self.tracking_uri_override
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.endpoint_port}"

    @property
    def credentials_path(self) -> Path:
        return self.state_dir / CREDENTIALS_FILE

    def credentials(self, create: bool = False) -> Credentials | None:
        """Credentials for S3: the local generated pair in local mode, else the environment's.

        Returns None in aws mode without explicit keys (boto3's default chain then applies).
        """
        if self.mode != "local":
            return self.env_credentials
        return load_or_create_local_credentials(self.credentials_path, create=create)

    def s3_client_kwargs(self) -> dict[str, str]:
        """region_name, endpoint_url and keys for a boto3 S3 client (the ones that apply)."""
        kwargs = {"region_name": self.region}
        if self.s3_endpoint_url:
            kwargs["endpoint_url"] = self.s3_endpoint_url
        creds = self.credentials()
        if creds is not None:
            kwargs["aws_access_key_id"] = creds.access_key_id
            kwargs["aws_secret_access_key"] = creds.secret_access_key
        return kwargs

    def s3_env(self) -> dict[str, str]:
        """Environment for a child process (a step) so plain boto3/s3fs reach the same S3."""
        names = {
            "endpoint_url": "AWS_ENDPOINT_URL_S3",
            "aws_access_key_id": "AWS_ACCESS_KEY_ID",
            "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
        }
        env = {"AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}
        env.update({names[k]: v for k, v in self.s3_client_kwargs().items() if k in names})
        return env

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and make it 0700: only its owner can list
    or enter it, whatever the modes of the files inside."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def restrict_tree(path: Path) -> None:
    """Take group and other permissions off ``path`` and everything under it (folders 0700,
    files 0600 or 0700 if executable); a missing path is left alone."""
    if not path.exists() or path.is_symlink():
        return
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for entry in entries:
        if entry.is_symlink():
            continue
        mode = entry.stat().st_mode & 0o777
        if mode & 0o077:
            entry.chmod(mode & 0o700)


def _temporary_beside(path: Path) -> Path:
    """A name next to ``path`` that no other process or thread is using."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically by ``data`` in a file that is 0600 from its creation."""
    tmp = _temporary_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def create_private_once(path: Path, data: bytes) -> bool:
    """Create ``path`` (0600, complete or not at all) unless it exists; True if this call did.

    Of two processes creating it at once, one wins and the other reads the winner's file.
    """
    tmp = _temporary_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        os.link(tmp, path)  # fails if path exists: never replaces a file another process made
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def load_or_create_local_credentials(path: Path, create: bool = False) -> Credentials | None:
    if not path.exists():
        if not create:
            return None
        private_dir(path.parent)
        new = {
            "access_key_id": "LEP" + secrets.token_hex(8).upper(),
            "secret_access_key": secrets.token_urlsafe(30),
        }
        create_private_once(path, json.dumps(new).encode())
    data = json.loads(path.read_text())
    return Credentials(data["access_key_id"], data["secret_access_key"])


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer port, got {raw!r}") from exc


def _percent(raw: str) -> float:
    try:
        value = float(raw) if raw.isascii() else float("nan")
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 100:
        raise ValueError(f"LEPTON_CAPTURE_PERCENT must be a number in 0..100, got {raw!r}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from environment variables (all optional).

    LEPTON_MODE (local|aws), LEPTON_STATE_DIR (default ./.lepton), LEPTON_S3_PORT,
    LEPTON_MLFLOW_PORT, LEPTON_ENDPOINT_PORT, LEPTON_DATA_BUCKET, LEPTON_ARTIFACT_BUCKET,
    LEPTON_MLFLOW_BUCKET, LEPTON_EXPERIMENT (or MLFLOW_EXPERIMENT_NAME), LEPTON_MODEL_NAME, LEPTON_SAGEMAKER_ROLE_ARN,
    LEPTON_PIPELINE_NAME, LEPTON_ENDPOINT_NAME, LEPTON_RAW_DATA_URI, LEPTON_IMAGE_URI,
    LEPTON_IMAGE_PARAMETER, LEPTON_ENV_DIR, LEPTON_CAPTURE_PERCENT, LEPTON_S3_ISOLATION, AWS_REGION / AWS_DEFAULT_REGION,
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, MLFLOW_TRACKING_URI.
    """
    env = os.environ if env is None else env
    mode = env.get("LEPTON_MODE", "local").strip().lower()
    if mode not in ("local", "aws"):
        raise ValueError(f"LEPTON_MODE must be 'local' or 'aws', got {mode!r}")
    env_creds = None
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        env_creds = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    defaults = Settings()
    return Settings(
        mode=mode,
        state_dir=Path(env.get("LEPTON_STATE_DIR", ".lepton")).absolute(),
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or defaults.region,
        s3_port=_int(env, "LEPTON_S3_PORT", defaults.s3_port),
        mlflow_port=_int(env, "LEPTON_MLFLOW_PORT", defaults.mlflow_port),
        endpoint_port=_int(env, "LEPTON_ENDPOINT_PORT", defaults.endpoint_port),
        capture_percent=_percent(env.get("LEPTON_CAPTURE_PERCENT", "0")),
        s3_isolation=env.get("LEPTON_S3_ISOLATION", "1") not in ("0", "false", "off"),
        s3_endpoint_url_override=env.get("AWS_ENDPOINT_URL_S3")
        or env.get("AWS_ENDPOINT_URL")
        or None,
        tracking_uri_override=env.get("MLFLOW_TRACKING_URI") or None,
        data_bucket=env.get("LEPTON_DATA_BUCKET", defaults.data_bucket),
        artifact_bucket=env.get("LEPTON_ARTIFACT_BUCKET", defaults.artifact_bucket),
        mlflow_bucket=env.get("LEPTON_MLFLOW_BUCKET", defaults.mlflow_bucket),
        experiment_name=env.get("LEPTON_EXPERIMENT")
        or env.get("MLFLOW_EXPERIMENT_NAME")
        or defaults.experiment_name,
        registered_model_name=env.get("LEPTON_MODEL_NAME") or defaults.registered_model_name,
        model_name_given=bool(env.get("LEPTON_MODEL_NAME")),
        sagemaker_role_arn=env.get("LEPTON_SAGEMAKER_ROLE_ARN") or None,
        pipeline_name=env.get("LEPTON_PIPELINE_NAME") or None,
        endpoint_name=env.get("LEPTON_ENDPOINT_NAME") or None,
        raw_data_uri=env.get("LEPTON_RAW_DATA_URI") or None,
        image_uri=env.get("LEPTON_IMAGE_URI") or None,
        image_parameter=env.get("LEPTON_IMAGE_PARAMETER") or None,
        env_root=Path(env["LEPTON_ENV_DIR"]).absolute()
        if env.get("LEPTON_ENV_DIR")
        else defaults.env_root,
        debug=env.get("LEPTON_DEBUG", "") not in ("", "0", "false"),
        env_credentials=env_creds,
    )
