"""The SageMaker containers, emulated without Docker: one folder plays `/opt/ml` per host.

Training: each emulated host (`algo-1`, `algo-2`, ...) gets `input/config/resourceconfig.json`,
`inputdataconfig.json` and `hyperparameters.json` as SageMaker writes them, its channels under
`input/data/<channel>` (the code bundle and the SDK's `sm_drivers` included), and `model/`,
`output/`, `checkpoints/`. The SageMaker SDK's own driver code, read from the job's
`sm_drivers` channel, then computes the container environment (`scripts/environment.py`) and
the command (`basic_script_driver.create_commands`), run by the step's Python: exactly what
`sm_train.sh` does in the container. Only what cannot exist on one machine is remapped: the
`/opt/ml` prefix to the host's folder, the first host's name to 127.0.0.1 and its fixed
rendezvous port to a free one.

Processing: `/opt/ml/...` paths are remapped into each instance's folder (one per
ProcessingInstanceCount: `algo-1` in the step's folder, the others beside it), the config
files SageMaker gives a processing container are written (`current_host` per instance), and
the entry point runs on every instance at once, with the step's Python.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPT_ML = "/opt/ml"
LOOPBACK = "127.0.0.1"
# What a container's environment keeps from the machine's: the rest (the developer's virtual
# environment, PYTHONPATH, AWS keys) must not leak into a step, or local runs would pass where
# containers fail.
KEPT_VARIABLES = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "TERM")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

# Runs in the step's Python: the SDK driver's own code computes environment and command.
_DRIVER_PROBE = r"""
import importlib.util, json, os, shlex, sys
root, out = sys.argv[1], sys.argv[2]
drivers = os.path.join(root, "input", "data", "sm_drivers")
config = os.path.join(root, "input", "config")
sys.path.insert(0, drivers)

def load_module(name, rel):
    spec = importlib.util.spec_from_file_location(name, os.path.join(drivers, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

def read(path):
    return json.load(open(path)) if os.path.exists(path) else None

environment = load_module("sm_environment", "scripts/environment.py")
environment.read_source_code_json = lambda: read(os.path.join(drivers, "sourcecode.json"))
environment.read_distributed_json = lambda: read(os.path.join(drivers, "distributed.json"))
env_file = out + ".env"
environment.set_env(
    read(os.path.join(config, "resourceconfig.json")),
    read(os.path.join(config, "inputdataconfig.json")),
    read(os.path.join(config, "hyperparameters.json")),
    output_file=env_file,
)
values = {}
for line in open(env_file):
    words = shlex.split(line)
    if len(words) == 2 and words[0] == "export":
        key, _, value = words[1].partition("=")
        values[key] = value
os.environ.update(values)
driver = load_module("sm_basic_script_driver", "distributed_drivers/basic_script_driver.py")
json.dump({"env": values, "command": driver.create_commands()}, open(out, "w"))
"""


class ContainerError(RuntimeError):
    """The emulated container could not be set up; the message says why."""


@dataclass(frozen=True)
class Host:
    """One emulated training instance: `root` plays its `/opt/ml`."""

    name: str  # algo-1, algo-2, ...
    root: Path

    def path(self, container_path: str) -> Path:
        """The host's folder for an `/opt/ml/...` path."""
        return Path(remap(container_path, OPT_ML, self.root))


def remap(value: str, prefix: str, local: Path) -> str:
    return value.replace(prefix, str(local)) if isinstance(value, str) else value


def remap_tree(value: Any, prefix: str, local: Path) -> Any:
    """`prefix` replaced by `local` in every string of a JSON-like value."""
    if isinstance(value, str):
        return remap(value, prefix, local)
    if isinstance(value, dict):
        return {k: remap_tree(v, prefix, local) for k, v in value.items()}
    if isinstance(value, list):
        return [remap_tree(v, prefix, local) for v in value]
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# What the container image sets for every process (infra/image/Dockerfile's ENV, checked by
# tests/unit/test_image.py). MLflow's telemetry is off: it would call out to the internet from
# every job, and its thread unsets an environment variable while others read os.environ (a
# training job failed with KeyError: '_MLFLOW_TELEMETRY_SESSION_ID' inside requests).
IMAGE_ENV = {
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def base_environment(python: Path) -> dict[str, str]:
    """A container-like environment: the step's Python first on PATH, the image's variables,
    nothing else inherited but locale, home and temp settings."""
    env = {k: os.environ[k] for k in KEPT_VARIABLES if k in os.environ}
    env["PATH"] = f"{python.parent}:{SYSTEM_PATH}"
    env.update(IMAGE_ENV)
    return env


# ---- training ------------------------------------------------------------------------------


def training_hosts(work: Path, count: int) -> list[Host]:
    return [Host(f"algo-{i}", work / "hosts" / f"algo-{i}") for i in range(1, count + 1)]


def write_training_config(
    host: Host,
    hosts: list[Host],
    instance_type: str,
    channels: list[str],
    hyperparameters: dict[str, Any],
) -> None:
    """The files SageMaker puts in `/opt/ml/input/config` of a training container."""
    names = [h.name for h in hosts]
    resource = {
        "current_host": host.name,
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": names,
        "instance_groups": [
            {
                "instance_group_name": "homogeneousCluster",
                "instance_type": instance_type,
                "hosts": names,
            }
        ],
        "network_interface_name": "eth0",
    }
    data = {
        c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for c in channels
    }
    config = host.path(f"{OPT_ML}/input/config")
    config.mkdir(parents=True, exist_ok=True)
    for name, doc in (
        ("resourceconfig.json", resource),
        ("inputdataconfig.json", data),
        ("hyperparameters.json", {k: str(v) for k, v in hyperparameters.items()}),
    ):
        (config / name).write_text(json.dumps(doc, indent=1))
    for folder in ("model", "output/data", "checkpoints"):
        host.path(f"{OPT_ML}/{folder}").mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Launch:
    """What the container would run on one host, with its environment."""

    command: list[str]
    env: dict[str, str]
    cwd: Path


def sdk_driver_launch(
    host: Host, python: Path, job_name: str, master_port: int, base_env: dict[str, str]
) -> Launch:
    """The SDK driver's environment and command for `host` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="lepton-driver-") as tmp:
        out = Path(tmp) / "launch.json"
        probe_env = {**base_env, "TRAINING_JOB_NAME": job_name}
        proc = subprocess.run(
            [str(python), "-c", _DRIVER_PROBE, str(host.root), str(out)],
            env=probe_env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.exists():
            raise ContainerError(
                f"the SageMaker driver scripts failed to set up {host.name}: "
                + (proc.stderr.strip().splitlines() or ["no output"])[-1]
            )
        launch = json.loads(out.read_text())
    env = {k: remap(str(v), OPT_ML, host.root) for k, v in launch["env"].items()}
    # One machine: the first host is loopback, and its rendezvous port a free one.
    env["SM_MASTER_ADDR"] = LOOPBACK
    env["SM_MASTER_PORT"] = str(master_port)
    command = [str(python), *launch["command"][1:]]
    return Launch(command, env, host.path(f"{OPT_ML}/input/data/code"))


def shared_threads(total_processes: int) -> str:
    """OMP threads per process when all emulated hosts share this machine's cores."""
    return str(max(1, (os.cpu_count() or 1) // max(1, total_processes)))


def processing_hosts(instance_count: int) -> list[str]:
    return [f"algo-{i}" for i in range(1, instance_count + 1)]


def processing_config(
    root: Path, job_name: str, instance_count: int, instance_type: str, current_host: str = ""
) -> None:
    """`/opt/ml/config/{resourceconfig,processingjobconfig}.json` of one processing instance."""
    config = root / "config"
    config.mkdir(parents=True, exist_ok=True)
    hosts = processing_hosts(instance_count)
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": current_host or hosts[0], "hosts": hosts}, indent=1)
    )
    (config / "processingjobconfig.json").write_text(
        json.dumps(
            {
                "ProcessingJobName": job_name,
                "ProcessingResources": {
                    "ClusterConfig": {
                        "InstanceCount": instance_count,
                        "InstanceType": instance_type,
                    }
                },
            },
            indent=1,
        )
    )


def processing_command(tokens: list[str], python: Path, root: Path) -> list[str]:
    """The container's command with `/opt/ml` remapped to `root` and its `python3` (or
    `python`) the step's Python."""
    command = [remap(t, OPT_ML, root) for t in tokens]
    if command and Path(command[0]).name in ("python", "python3"):
        command[0] = str(python)
    return command


def quoted(command: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in command)
