"""The training job's environment: the only module in ``training`` that reads ``os.environ``.

Parses the SageMaker training-container contract (``SM_*``), torchrun's variables and the
project's own ``LEPTON_*`` / ``MLFLOW_*`` settings into one frozen, typed value. Everything
else in ``training`` takes that value (or plain arguments) instead of reading the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

N = TypeVar("N", int, float)

DEFAULT_CHECKPOINT_DIR = "/opt/ml/checkpoints"  # SageMaker syncs this folder to S3
# MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) let one request to a
# server that went away block ~2 min when refused (back-off 0+2+4+...+64 s) and up to
# 8 x 120 s when it accepts but does not answer; the job's closing calls waited for every
# queued metrics batch in turn: a 12-epoch run whose server was killed at epoch 3 hung > 300 s
# after its last epoch (issue 13). With these, a refused request fails within ~4 s and a
# silent server within 3 x 20 s + 4 s; the tracker retries on top of that, within its own
# window (tracking_retry_window_s).
MLFLOW_HTTP_MAX_RETRIES = 2
MLFLOW_HTTP_TIMEOUT_S = 20
TRACKING_RETRY_WINDOW_S = 120.0


@dataclass(frozen=True)
class TrainEnv:
    """Where the job reads and writes, who it is in the process group, where it tracks.

    Paths are ``None`` when the environment does not name them (a CLI flag must then).
    """

    dataset_dir: str | None  # SM_CHANNEL_DATASET: folder (or s3:// URI) with manifest.json
    model_dir: str | None  # SM_MODEL_DIR: exported model; SageMaker tars it as model.tar.gz
    output_data_dir: str | None  # SM_OUTPUT_DATA_DIR: training.json and other outputs
    checkpoint_dir: str  # LEPTON_CHECKPOINT_DIR, default /opt/ml/checkpoints
    hyperparameters: Mapping[str, str] = field(default_factory=dict)  # SM_HPS, values as str
    hosts: tuple[str, ...] = ()  # SM_HOSTS
    current_host: str | None = None  # SM_CURRENT_HOST
    num_gpus: int = 0  # SM_NUM_GPUS (per host)
    rank: int = 0  # RANK: global rank (torchrun)
    local_rank: int = 0  # LOCAL_RANK: rank on this host
    world_size: int = 1  # WORLD_SIZE: processes in the whole job
    local_world_size: int = 1  # LOCAL_WORLD_SIZE: processes on this host
    torchrun: bool = False  # launched by torchrun / torchelastic (TORCHELASTIC_RUN_ID set)
    restart_count: int = 0  # TORCHELASTIC_RESTART_COUNT: torchrun --max-restarts attempt
    agent_store: bool = False  # TORCHELASTIC_USE_AGENT_STORE: torchrun hosts the TCPStore
    master_addr: str | None = None  # MASTER_ADDR: rendezvous store host
    master_port: int = 0  # MASTER_PORT: rendezvous store port
    mlflow_tracking_uri: str | None = None  # MLFLOW_TRACKING_URI: http(s)://, file:, ARN
    mlflow_experiment_name: str | None = None  # MLFLOW_EXPERIMENT_NAME
    mlflow_run_name: str | None = None  # LEPTON_MLFLOW_RUN_NAME
    code_version: str = "unknown"  # LEPTON_CODE_VERSION (git sha or release)
    # LEPTON_TRACKING_RETRY_S: seconds the end of a job waits for a tracking server that went
    # away, then it finishes without it (training.json's "tracking" says what was not logged)
    tracking_retry_window_s: float = TRACKING_RETRY_WINDOW_S
    mlflow_http_max_retries: int = MLFLOW_HTTP_MAX_RETRIES  # MLFLOW_HTTP_REQUEST_MAX_RETRIES
    mlflow_http_timeout_s: int = MLFLOW_HTTP_TIMEOUT_S  # MLFLOW_HTTP_REQUEST_TIMEOUT, seconds

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        """Hosts in the job, derived from world size and processes per host."""
        nodes, rest = divmod(self.world_size, max(self.local_world_size, 1))
        if rest:
            raise ValueError(
                f"WORLD_SIZE={self.world_size} is not a multiple of "
                f"LOCAL_WORLD_SIZE={self.local_world_size}"
            )
        return max(nodes, 1)


def _number(environ: Mapping[str, str], name: str, default: N, kind: Callable[[str], N]) -> N:
    raw = environ.get(name, "")
    if raw.strip() == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"environment variable {name}={raw!r} is not {what}") from exc


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    return _number(environ, name, default, int)


def _opt(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _hyperparameters(raw: str | None) -> dict[str, str]:
    """SM_HPS is a JSON object; SageMaker may give numbers or strings, we keep strings."""
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"SM_HPS is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ValueError("SM_HPS must be a JSON object")
    out: dict[str, str] = {}
    for key, value in parsed.items():
        if isinstance(value, bool):
            out[str(key)] = "true" if value else "false"
        elif isinstance(value, str):
            out[str(key)] = value
        else:
            out[str(key)] = json.dumps(value)
    return out


def _hosts(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        parsed = [h for h in raw.split(",") if h]
    return tuple(str(h) for h in parsed)


def read_env(environ: Mapping[str, str] | None = None) -> TrainEnv:
    """Parse ``environ`` (default: ``os.environ``) into a TrainEnv."""
    env = os.environ if environ is None else environ
    world_size = _int(env, "WORLD_SIZE", 1)
    return TrainEnv(
        dataset_dir=_opt(env, "SM_CHANNEL_DATASET"),
        model_dir=_opt(env, "SM_MODEL_DIR"),
        output_data_dir=_opt(env, "SM_OUTPUT_DATA_DIR"),
        checkpoint_dir=_opt(env, "LEPTON_CHECKPOINT_DIR") or DEFAULT_CHECKPOINT_DIR,
        hyperparameters=_hyperparameters(_opt(env, "SM_HPS")),
        hosts=_hosts(_opt(env, "SM_HOSTS")),
        current_host=_opt(env, "SM_CURRENT_HOST"),
        num_gpus=_int(env, "SM_NUM_GPUS", 0),
        rank=_int(env, "RANK", 0),
        local_rank=_int(env, "LOCAL_RANK", 0),
        world_size=world_size,
        local_world_size=_int(env, "LOCAL_WORLD_SIZE", world_size),
        torchrun=_opt(env, "TORCHELASTIC_RUN_ID") is not None,
        restart_count=_int(env, "TORCHELASTIC_RESTART_COUNT", 0),
        agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE", "") == "True",
        master_addr=_opt(env, "MASTER_ADDR"),
        master_port=_int(env, "MASTER_PORT", 0),
        mlflow_tracking_uri=_opt(env, "MLFLOW_TRACKING_URI"),
        mlflow_experiment_name=_opt(env, "MLFLOW_EXPERIMENT_NAME"),
        mlflow_run_name=_opt(env, "LEPTON_MLFLOW_RUN_NAME"),
        code_version=_opt(env, "LEPTON_CODE_VERSION") or "unknown",
        tracking_retry_window_s=_number(
            env, "LEPTON_TRACKING_RETRY_S", TRACKING_RETRY_WINDOW_S, float
        ),
        mlflow_http_max_retries=_int(
            env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES", MLFLOW_HTTP_MAX_RETRIES
        ),
        mlflow_http_timeout_s=_int(env, "MLFLOW_HTTP_REQUEST_TIMEOUT", MLFLOW_HTTP_TIMEOUT_S),
    )


def bound_mlflow_requests(env: TrainEnv) -> None:
    """Make MLflow's client use this job's HTTP bounds (it reads them from the environment
    at every request), so no tracking call can block for minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(env.mlflow_http_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(env.mlflow_http_timeout_s)


@dataclass(frozen=True)
class LaunchEnv:
    """What the training launcher (training/launch.py) reads: the host layout SageMaker's
    training toolkit exports (``SM_*``, from resourceconfig.json) and the process count the
    pipeline's ProcessesPerNode parameter sets."""

    host_count: int = 1  # SM_HOST_COUNT
    host_rank: int = 0  # SM_CURRENT_HOST_RANK: this host's place in the sorted host list
    master_addr: str = "algo-1"  # SM_MASTER_ADDR: the first host
    master_port: int = 7777  # SM_MASTER_PORT
    num_gpus: int = 0  # SM_NUM_GPUS on this host
    num_neurons: int = 0  # SM_NUM_NEURONS on this host
    instance_type: str = ""  # SM_CURRENT_INSTANCE_TYPE
    network_interface: str = "eth0"  # SM_NETWORK_INTERFACE_NAME
    processes_per_node: int = 0  # LEPTON_NPROC_PER_NODE (ProcessesPerNode); 0 = one per GPU

    @property
    def nproc_per_node(self) -> int:
        """Processes on this host: the parameter, else one per GPU (or Neuron core), else 1;
        the rule of the SageMaker SDK's `get_process_count`."""
        return self.processes_per_node or self.num_gpus or self.num_neurons or 1


def read_launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    env = os.environ if environ is None else environ
    defaults = LaunchEnv()
    return LaunchEnv(
        host_count=_int(env, "SM_HOST_COUNT", defaults.host_count),
        host_rank=_int(env, "SM_CURRENT_HOST_RANK", defaults.host_rank),
        master_addr=_opt(env, "SM_MASTER_ADDR") or defaults.master_addr,
        master_port=_int(env, "SM_MASTER_PORT", defaults.master_port),
        num_gpus=_int(env, "SM_NUM_GPUS", 0),
        num_neurons=_int(env, "SM_NUM_NEURONS", 0),
        instance_type=_opt(env, "SM_CURRENT_INSTANCE_TYPE") or "",
        network_interface=_opt(env, "SM_NETWORK_INTERFACE_NAME") or defaults.network_interface,
        processes_per_node=_int(env, "LEPTON_NPROC_PER_NODE", 0),
    )


def needs_launcher(environ: Mapping[str, str] | None = None) -> bool:
    """True in a SageMaker training container (SM_HOST_COUNT set) not yet under torchrun:
    the entry point must start torchrun for this host first (training/launch.py)."""
    env = os.environ if environ is None else environ
    return bool(_opt(env, "SM_HOST_COUNT")) and _opt(env, "TORCHELASTIC_RUN_ID") is None
