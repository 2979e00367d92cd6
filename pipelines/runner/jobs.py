"""Run a Processing or Training job of a pipeline definition as local processes.

This emulates the SageMaker container contract without Docker: inputs are fetched from S3 into
the step's work folder, `/opt/ml/...` paths are remapped into it, the entry module runs
(processing: the job's `python3 -m <module>`; training: `training.train` under `torchrun`),
and outputs (model.tar.gz, processing outputs, checkpoints) are uploaded back to S3.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.runner import transfer

PROCESSING_ROOT = "/opt/ml/processing"
CHECKPOINT_ROOT = "/opt/ml/checkpoints"
# Channels the SDK adds for its own drivers and the uploaded source: locally the checkout runs.
SDK_CHANNELS = {"code", "sm_drivers"}
PROGRESS = re.compile(r"(epoch|Epoch|images/s|quarantin|prepared|accuracy|deployed|endpoint)")


class JobFailed(RuntimeError):
    """The job's process exited non-zero; the message names the log file."""


@dataclass(frozen=True)
class JobEnv:
    """What every local job gets besides its own arguments."""

    env: dict[str, str]  # S3 endpoint/credentials, tracking URI, state folder
    s3: Any  # boto3 S3 client
    echo: Callable[[str], None]  # progress printer


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM the child when the runner dies (even by SIGKILL)."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_logged(
    command: list[str], env: dict[str, str], log_path: Path, echo: Callable[[str], None], cwd: Path
) -> None:
    """Run `command`, appending all output to `log_path` and echoing progress lines."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            preexec_fn=_die_with_parent,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if PROGRESS.search(line):
                    echo(line.rstrip()[:160])
            code = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise JobFailed(f"exited with code {code}; log {log_path}\n    " + "\n    ".join(tail))


def _remap(value: str, root: str, local: Path) -> str:
    return value.replace(root, str(local)) if isinstance(value, str) else value


def run_processing(name: str, args: dict[str, Any], work: Path, job: JobEnv) -> dict[str, Any]:
    """Run a resolved CreateProcessingJob request locally; return DescribeProcessingJob-like properties."""
    root = work / "processing"
    module, container_argv = processing_entry(args)
    argv = [_remap(t, PROCESSING_ROOT, root) for t in container_argv]

    for item in args.get("ProcessingInputs", []):
        s3_input = item.get("S3Input")
        if not s3_input or item.get("InputName") in SDK_CHANNELS:
            continue
        if s3_input["LocalPath"].rstrip("/").endswith("/input/code"):
            continue  # the code bundle: locally the checkout is the code
        local = Path(_remap(s3_input["LocalPath"], PROCESSING_ROOT, root))
        count = transfer.download(job.s3, s3_input["S3Uri"], local)
        job.echo(f"{name}: input {item.get('InputName')} <- {s3_input['S3Uri']} ({count} files)")
    outputs = args.get("ProcessingOutputConfig", {}).get("Outputs", [])
    for out in outputs:
        Path(_remap(out["S3Output"]["LocalPath"], PROCESSING_ROOT, root)).mkdir(
            parents=True, exist_ok=True
        )

    env = {**os.environ, **job.env, **{k: str(v) for k, v in args.get("Environment", {}).items()}}
    command = [sys.executable, "-m", module, *argv]
    run_logged(command, env, work / "step.log", job.echo, cwd=Path.cwd())

    for out in outputs:
        local = Path(_remap(out["S3Output"]["LocalPath"], PROCESSING_ROOT, root))
        count = transfer.upload(job.s3, local, out["S3Output"]["S3Uri"])
        job.echo(
            f"{name}: output {out['OutputName']} -> {out['S3Output']['S3Uri']} ({count} files)"
        )
    return {
        **args,
        "ProcessingJobName": f"{name}-{work.parent.parent.name}",
        "ProcessingJobStatus": "Completed",
    }


def processing_entry(args: dict[str, Any]) -> tuple[str, list[str]]:
    """(entry module, its arguments) of a `python3 -m <module> ...` processing job."""
    app = args["AppSpecification"]
    tokens = [str(t) for t in app.get("ContainerEntrypoint", [])] + [
        str(t) for t in app.get("ContainerArguments", [])
    ]
    if "-m" not in tokens or tokens.index("-m") + 1 >= len(tokens):
        raise JobFailed(f"not a `python3 -m <module>` processing job: {tokens}")
    at = tokens.index("-m")
    return tokens[at + 1], tokens[at + 2 :]


def training_entry(args: dict[str, Any]) -> str:
    """The training job's entry module (`training/train.py` -> `training.train`)."""
    script = str(args.get("Environment", {}).get("LEPTON_ENTRY_SCRIPT", "training/train.py"))
    return script.removesuffix(".py").replace("/", ".")


def output_folder(args: dict[str, Any], work: Path, output_name: str) -> Path:
    for out in args.get("ProcessingOutputConfig", {}).get("Outputs", []):
        if out["OutputName"] == output_name:
            return Path(_remap(out["S3Output"]["LocalPath"], PROCESSING_ROOT, work / "processing"))
    raise KeyError(f"no processing output named {output_name!r}")


def _hyperparameters(raw: dict[str, Any]) -> dict[str, Any]:
    """SageMaker passes strings (the SDK JSON-encodes them); the toolkit decodes each value."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("sagemaker_"):
            continue
        try:
            out[key] = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_training(name: str, args: dict[str, Any], work: Path, job: JobEnv) -> dict[str, Any]:
    """Run a resolved CreateTrainingJob request locally under torchrun."""
    env = {**os.environ, **job.env, **{k: str(v) for k, v in args.get("Environment", {}).items()}}
    channels: list[str] = []
    for channel in args.get("InputDataConfig", []):
        channel_name = channel["ChannelName"]
        if channel_name in SDK_CHANNELS:
            continue
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        local = work / "input" / "data" / channel_name
        count = transfer.download(job.s3, uri, local)
        job.echo(f"{name}: channel {channel_name} <- {uri} ({count} files)")
        env[f"SM_CHANNEL_{channel_name.upper()}"] = str(local)
        channels.append(channel_name)

    model_dir, output_dir = work / "model", work / "output" / "data"
    checkpoints = work / "checkpoints"
    for folder in (model_dir, output_dir, checkpoints):
        folder.mkdir(parents=True, exist_ok=True)
    checkpoint_uri = args.get("CheckpointConfig", {}).get("S3Uri")
    if (
        checkpoint_uri
        and not any(checkpoints.iterdir())
        and transfer.exists(job.s3, checkpoint_uri)
    ):
        transfer.download(job.s3, checkpoint_uri, checkpoints)  # SageMaker restores these too
        job.echo(f"{name}: restored checkpoints from {checkpoint_uri}")

    nodes = int(args.get("ResourceConfig", {}).get("InstanceCount", 1))
    # 0 means "one per GPU" on SageMaker; this host has no GPU for the runner, so one process.
    per_node = max(1, int(env.get("LEPTON_NPROC_PER_NODE") or "1"))
    nproc = per_node * nodes  # M nodes emulated on one host
    env.update(
        {
            "SM_MODEL_DIR": str(model_dir),
            "SM_OUTPUT_DATA_DIR": str(output_dir),
            "SM_HPS": json.dumps(_hyperparameters(args.get("HyperParameters", {}))),
            "SM_HOSTS": json.dumps(["algo-1"]),
            "SM_CURRENT_HOST": "algo-1",
            "SM_NUM_GPUS": "0",
            "SM_CHANNELS": json.dumps(channels),
            "LEPTON_CHECKPOINT_DIR": str(checkpoints),
            "OMP_NUM_THREADS": env.get(
                "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))
            ),
        }
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        training_entry(args),
    ]
    job.echo(f"{name}: torchrun with {nproc} process(es)")
    run_logged(command, env, work / "step.log", job.echo, cwd=Path.cwd())

    output_path = args["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    job_name = f"{name}-{work.parent.parent.name}"
    from training.export import pack_model_tar  # the one reproducible model.tar.gz writer

    tar_path = work / "model.tar.gz"
    pack_model_tar(model_dir, tar_path)
    model_uri = f"{output_path}/{job_name}/output/model.tar.gz"
    _put_file(job.s3, tar_path, model_uri)
    if checkpoint_uri:
        transfer.upload(job.s3, checkpoints, checkpoint_uri)
    summary_path = output_dir / "training.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    metrics = summary.get("metrics", {})
    return {
        **args,
        "TrainingJobName": job_name,
        "TrainingJobStatus": "Completed",
        "ModelArtifacts": {"S3ModelArtifacts": model_uri},
        "FinalMetricDataList": [
            {"MetricName": k, "Value": v} for k, v in metrics.items() if isinstance(v, (int, float))
        ],
        "Lepton": {"training": summary, "model_dir": str(model_dir)},
    }


def _put_file(s3: Any, path: Path, uri: str) -> None:
    from pipelines.storage import is_s3_uri, split_s3_uri

    if not is_s3_uri(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_bytes(path.read_bytes())
        return
    bucket, key = split_s3_uri(uri)
    s3.upload_file(str(path), bucket, key)
