"""Run a Processing or Training job of a pipeline definition as SageMaker would run its
container, without Docker (pipelines/runner/container.py).

Inputs are fetched from S3 into the job's folder (the code bundle and the SDK's drivers are
inputs like any other: the job runs the staged code, never the checkout), the step's Python is
the container image's environment (pipelines/runner/environment.py), and outputs (processing
outputs, model.tar.gz) go back to S3; checkpoints go while the job runs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.runner import container, transfer
from pipelines.runner.checkpoints import CheckpointSync
from pipelines.runner.processes import Command, JobFailed, run_commands
from pipelines.settings import Settings

__all__ = ["JobFailed", "JobEnv", "run_processing", "run_training"]
SDK_CHANNELS = {"code", "sm_drivers"}  # the staged source and the SDK's driver scripts
CODE_SUFFIX = "/input/code"  # a processing input at .../input/code is the code bundle


@dataclass(frozen=True)
class JobEnv:
    """What every local job gets besides its own arguments."""

    env: dict[str, str]  # S3 endpoint/credentials, tracking URI, state folder (the "role")
    s3: Any  # boto3 S3 client
    echo: Callable[[str], None]  # progress printer
    python: Path  # the step environment's interpreter
    listings: transfer.Listings | None = None  # the step's inputs as its cache key saw them


def job_environment(settings: Settings, execution_id: str) -> dict[str, str]:
    """What a job's container gets from outside: locally the S3 endpoint and keys stand in
    for the execution role; the state folder and ports are for the local Deploy step."""
    env = settings.s3_env()
    env.update(
        {
            "LEPTON_STATE_DIR": str(settings.state_dir),
            "LEPTON_MODE": settings.mode,
            "MLFLOW_TRACKING_URI": settings.tracking_uri,
            "MLFLOW_EXPERIMENT_NAME": settings.experiment_name,
            "LEPTON_PIPELINE_EXECUTION": execution_id,
            "LEPTON_ENDPOINT_PORT": str(settings.endpoint_port),
            "LEPTON_MLFLOW_PORT": str(settings.mlflow_port),
            "LEPTON_S3_PORT": str(settings.s3_port),
            "LEPTON_CAPTURE_PERCENT": str(settings.capture_percent),  # the local Deploy's
            "LEPTON_ARTIFACT_BUCKET": settings.artifact_bucket,
        }
    )
    return env


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


def job_name(step: str, work: Path) -> str:
    return f"{step}-{work.parent.parent.name}"  # unique per execution, like SageMaker's


def processing_root(work: Path, host: str = "algo-1") -> Path:
    """Plays /opt/ml in the processing container of instance `host`."""
    return work / "opt-ml" if host == "algo-1" else work / "instances" / host / "opt-ml"


def output_folder(args: dict[str, Any], work: Path, output_name: str) -> Path:
    for out in args.get("ProcessingOutputConfig", {}).get("Outputs", []):
        if out["OutputName"] == output_name:
            return Path(
                container.remap(
                    out["S3Output"]["LocalPath"], container.OPT_ML, processing_root(work)
                )
            )
    raise KeyError(f"no processing output named {output_name!r}")


def _definition_env(args: dict[str, Any], root: Path) -> dict[str, str]:
    return {
        k: container.remap(str(v), container.OPT_ML, root)
        for k, v in args.get("Environment", {}).items()
    }


def _processing_inputs(
    name: str, args: dict[str, Any], root: Path, share: tuple[int, int], job: JobEnv
) -> None:
    """One instance's inputs: all of a FullyReplicated input, its part of a ShardedByS3Key one."""
    for item in args.get("ProcessingInputs", []):
        s3_input = item.get("S3Input")
        if not s3_input:
            continue
        local = Path(container.remap(s3_input["LocalPath"], container.OPT_ML, root))
        sharded = s3_input.get("S3DataDistributionType") == "ShardedByS3Key"
        code = s3_input["LocalPath"].rstrip("/").endswith(CODE_SUFFIX)
        label = f"{name}: input {item.get('InputName')}"
        count = transfer.download(
            job.s3,
            s3_input["S3Uri"],
            local,
            share if sharded else None,
            None if code else _prefixed(job, label),
            job.listings,
        )
        if not code:
            part = f", share {share[0] + 1}/{share[1]}" if sharded and share[1] > 1 else ""
            job.echo(f"{label} <- {s3_input['S3Uri']} ({count} files{part})")


def _prefixed(job: JobEnv, label: str) -> Callable[[str], None]:
    """The job's printer, each line led by `label` (a download's progress)."""
    return lambda line: job.echo(f"{label}: {line}")


def run_processing(name: str, args: dict[str, Any], work: Path, job: JobEnv) -> dict[str, Any]:
    """Run a resolved CreateProcessingJob request on its instances (all at once, each with its
    own /opt/ml); return DescribeProcessingJob-like properties. Every instance's outputs are
    uploaded to the output's prefix, as SageMaker does. Every attempt starts on fresh
    instances: what survives an attempt is what reached S3."""
    cluster = args.get("ProcessingResources", {}).get("ClusterConfig", {})
    hosts = container.processing_hosts(int(cluster.get("InstanceCount", 1)))
    outputs = args.get("ProcessingOutputConfig", {}).get("Outputs", [])
    app = args["AppSpecification"]
    tokens = [str(t) for t in app.get("ContainerEntrypoint", [])]
    tokens += [str(t) for t in app.get("ContainerArguments", [])]
    commands = []
    for i, host in enumerate(hosts):
        root = processing_root(work, host)
        # a resumed step sees nothing of an earlier attempt here (a half-downloaded input, an
        # object since deleted, outputs it would upload again)
        shutil.rmtree(root, ignore_errors=True)
        container.processing_config(
            root, job_name(name, work), len(hosts), str(cluster.get("InstanceType", "")), host
        )
        _processing_inputs(name, args, root, (i, len(hosts)), job)
        for out in outputs:
            Path(container.remap(out["S3Output"]["LocalPath"], container.OPT_ML, root)).mkdir(
                parents=True, exist_ok=True
            )
        env = {**container.base_environment(job.python), **job.env, **_definition_env(args, root)}
        if len(hosts) > 1:
            env.setdefault("OMP_NUM_THREADS", container.shared_threads(len(hosts)))
        command = container.processing_command(tokens, job.python, root)
        log = work / ("step.log" if i == 0 else f"{host}.log")
        commands.append(Command(command, env, work, log, "" if i == 0 else host))
    if job.listings is not None:
        job.listings.release()  # every instance has its inputs
    if len(hosts) > 1:
        job.echo(f"{name}: {len(hosts)} instances")
    run_commands(commands, job.echo)
    for out in outputs:
        count = 0
        for host in hosts:
            local = container.remap(
                out["S3Output"]["LocalPath"], container.OPT_ML, processing_root(work, host)
            )
            count += transfer.upload(job.s3, Path(local), out["S3Output"]["S3Uri"])
        job.echo(
            f"{name}: output {out['OutputName']} -> {out['S3Output']['S3Uri']} ({count} files)"
        )
    return {**args, "ProcessingJobName": job_name(name, work), "ProcessingJobStatus": "Completed"}


def _fetch_channels(
    name: str, args: dict[str, Any], hosts: list[container.Host], job: JobEnv
) -> list[str]:
    """Every channel into every host (FullyReplicated); returns the channel names."""
    channels = []
    for channel in args.get("InputDataConfig", []):
        channel_name = channel["ChannelName"]
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        first = hosts[0].path(f"{container.OPT_ML}/input/data/{channel_name}")
        sdk = channel_name in SDK_CHANNELS
        label = f"{name}: channel {channel_name}"
        log = None if sdk else _prefixed(job, label)
        count = transfer.download(job.s3, uri, first, log=log, listings=job.listings)
        for host in hosts[1:]:
            transfer.download(
                job.s3, str(first), host.path(f"{container.OPT_ML}/input/data/{channel_name}")
            )
        if not sdk:
            job.echo(f"{label} <- {uri} ({count} files, {len(hosts)} host(s))")
        channels.append(channel_name)
    return channels


def _restore_checkpoints(name: str, uri: str | None, folders: list[Path], job: JobEnv) -> None:
    """SageMaker copies the checkpoint URI's objects into every host's checkpoint folder when
    a job starts, so all ranks resume from the same checkpoint."""
    if not uri or not transfer.exists(job.s3, uri):
        return
    count = transfer.download(job.s3, uri, folders[0])
    for folder in folders[1:]:
        transfer.download(job.s3, str(folders[0]), folder)
    job.echo(f"{name}: restored {count} checkpoint file(s) from {uri} to {len(folders)} host(s)")


def _host_commands(
    name: str, args: dict[str, Any], work: Path, hosts: list[container.Host], job: JobEnv
) -> tuple[list[Command], dict[str, int]]:
    """Each host's command as the SDK's driver makes it, and the job's topology."""
    port = container.free_port()  # the first host's rendezvous port, shared by all hosts
    local_ckpt = str(args.get("CheckpointConfig", {}).get("LocalPath", "/opt/ml/checkpoints"))
    commands = []
    per_host = 1
    for i, host in enumerate(hosts):
        base = {**container.base_environment(job.python), **job.env}
        launch = container.sdk_driver_launch(host, job.python, job_name(name, work), port, base)
        env = {**base, **_definition_env(args, host.root), **launch.env}
        env["LEPTON_CHECKPOINT_DIR"] = str(host.path(local_ckpt))
        per_host = int(env.get("LEPTON_NPROC_PER_NODE") or 0) or int(env.get("SM_NUM_GPUS") or 0)
        per_host = per_host or 1
        env.setdefault("OMP_NUM_THREADS", container.shared_threads(per_host * len(hosts)))
        log = work / ("step.log" if i == 0 else f"{host.name}.log")
        commands.append(Command(launch.command, env, launch.cwd, log, "" if i == 0 else host.name))
    topology = {"hosts": len(hosts), "processes_per_host": per_host}
    topology["world_size"] = per_host * len(hosts)
    return commands, topology


def run_training(name: str, args: dict[str, Any], work: Path, job: JobEnv) -> dict[str, Any]:
    """Run a resolved CreateTrainingJob request on its emulated hosts. Every attempt starts on
    fresh hosts, as on SageMaker: what survives an attempt is what reached S3."""
    resources = args.get("ResourceConfig", {})
    shutil.rmtree(work / "hosts", ignore_errors=True)
    hosts = container.training_hosts(work, int(resources.get("InstanceCount", 1)))
    instance_type = str(resources.get("InstanceType", "ml.m5.xlarge"))
    channels = _fetch_channels(name, args, hosts, job)
    if job.listings is not None:
        job.listings.release()
    for host in hosts:
        container.write_training_config(
            host, hosts, instance_type, channels, dict(args.get("HyperParameters", {}))
        )
    checkpoint = args.get("CheckpointConfig", {})
    local_ckpt = str(checkpoint.get("LocalPath", "/opt/ml/checkpoints"))
    folders = [host.path(local_ckpt) for host in hosts]
    _restore_checkpoints(name, checkpoint.get("S3Uri"), folders, job)
    leader_ckpt = folders[0]
    commands, topology = _host_commands(name, args, work, hosts, job)
    job.echo(
        f"{name}: {topology['hosts']} host(s) x {topology['processes_per_host']} process(es) "
        f"= world size {topology['world_size']}"
    )
    if checkpoint.get("S3Uri"):
        with CheckpointSync(job.s3, leader_ckpt, checkpoint["S3Uri"], echo=job.echo):
            run_commands(commands, job.echo)
    else:
        run_commands(commands, job.echo)
    return _training_outputs(name, args, work, hosts[0], job, topology)


def _training_outputs(
    name: str,
    args: dict[str, Any],
    work: Path,
    leader: container.Host,
    job: JobEnv,
    topology: dict[str, int],
) -> dict[str, Any]:
    """model.tar.gz of the first host's model folder to S3; DescribeTrainingJob-like properties."""
    from training.model_tar import pack_model_tar  # the one reproducible model.tar.gz writer

    name_of_job = job_name(name, work)
    output_path = args["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    tar_path = work / "model.tar.gz"
    pack_model_tar(leader.path(f"{container.OPT_ML}/model"), tar_path)
    model_uri = f"{output_path}/{name_of_job}/output/model.tar.gz"
    transfer.put_file(job.s3, tar_path, model_uri)
    job.echo(f"{name}: model -> {model_uri} ({tar_path.stat().st_size / 2**20:.1f} MiB)")
    summary_path = leader.path(f"{container.OPT_ML}/output/data/training.json")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    metrics = summary.get("metrics", {})
    return {
        **args,
        "TrainingJobName": name_of_job,
        "TrainingJobStatus": "Completed",
        "ModelArtifacts": {"S3ModelArtifacts": model_uri},
        "FinalMetricDataList": [
            {"MetricName": k, "Value": v} for k, v in metrics.items() if isinstance(v, (int, float))
        ],
        "Lepton": {"training": summary, "topology": topology},
    }
