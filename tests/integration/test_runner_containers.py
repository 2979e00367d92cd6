"""The local runner runs jobs as their SageMaker containers would: the staged code bundle, the
image's Python environment (infra/image/requirements.txt alone), the SDK driver's own
environment and command, one emulated `/opt/ml` per host, several hosts on loopback.

Jobs here read and write local folders instead of S3 (the runner's transfers accept both), so
no services are needed: the definition's S3 URIs are mirrored into a folder first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipelines.definition import names as n
from pipelines.definition.build import BuiltDefinition, build_definition
from pipelines.definition.config import aws_default
from pipelines.definition.names import IMAGE_REQUIREMENTS
from pipelines.imports import SOURCE_ROOT
from pipelines.runner import container, jobs
from pipelines.runner.engine import flatten_steps, parameter_values
from pipelines.runner.environment import (
    ensure_environment,
    native_sources,
    read_pins,
    requirements_digest,
)
from pipelines.runner.expressions import Context, resolve
from pipelines.settings import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def step_python() -> Path:
    """The step environment `make setup` builds (built here if it is missing)."""
    return ensure_environment(SOURCE_ROOT / IMAGE_REQUIREMENTS, load_settings().env_root)


@pytest.fixture(scope="module")
def built(project_source: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltDefinition:
    cfg = aws_default(
        "arn:aws:iam::123456789012:role/r", "b", "eu-west-1", image_uri="x", train_setup="tiny"
    )
    return build_definition(cfg, project_source, tmp_path_factory.mktemp("staging"))


def _mirror(built: BuiltDefinition, root: Path) -> dict[str, str]:
    """The bundle's objects as files under `root`; s3:// URI -> local path."""
    for key, data in built.bundle.objects.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return {
        uri: str(root / uri.split(f"s3://{built.bundle.bucket}/", 1)[1])
        for uri in built.bundle.uris()
    }


def _local(value: Any, uris: dict[str, str]) -> Any:
    text = json.dumps(value)
    for uri, path in sorted(uris.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(uri, path)
    return json.loads(text)


def _step_args(built: BuiltDefinition, step: str, parameters: dict[str, Any], props: dict) -> Any:
    d = built.parsed()
    ctx = Context(
        parameters=parameter_values(d, parameters),
        execution={"PipelineExecutionId": "it"},
        step_properties=props,
    )
    return resolve(flatten_steps(d)[step].body["Arguments"], ctx)


def _train(
    built: BuiltDefinition, dataset: Path, work: Path, python: Path, hosts: int, per_host: int
) -> dict[str, Any]:
    uris = _mirror(built, work / "s3")
    props = {
        "Prepare": {
            "ProcessingJobName": "prepare-it",
            "ProcessingOutputConfig": {
                "Outputs": [{"OutputName": "dataset", "S3Output": {"S3Uri": str(dataset)}}]
            },
        }
    }
    params = {
        "TrainingInstanceCount": hosts,
        "ProcessesPerNode": per_host,
        "Epochs": 2,
        "PerDeviceBatchSize": 16,
    }
    args = _local(_step_args(built, n.TRAIN, params, props), uris)
    args.pop("CheckpointConfig")  # checkpoints to S3: tests/e2e
    args["OutputDataConfig"]["S3OutputPath"] = str(work / "models")
    job = jobs.JobEnv(env={}, s3=None, echo=lambda _m: None, python=python)
    step = work / "executions" / "it" / "steps" / "Train"
    step.mkdir(parents=True)
    return jobs.run_training("Train", args, step, job)


def test_two_hosts_train_like_one_host_with_two_processes(
    built: BuiltDefinition, tiny_dataset_dir: Path, step_python: Path, tmp_path: Path
) -> None:
    two_hosts = _train(built, tiny_dataset_dir, tmp_path / "a", step_python, hosts=2, per_host=1)
    one_host = _train(built, tiny_dataset_dir, tmp_path / "b", step_python, hosts=1, per_host=2)
    assert two_hosts["Lepton"]["topology"] == {"hosts": 2, "processes_per_host": 1, "world_size": 2}
    assert one_host["Lepton"]["topology"] == {"hosts": 1, "processes_per_host": 2, "world_size": 2}
    a, b = two_hosts["Lepton"]["training"], one_host["Lepton"]["training"]
    assert a["world_size"] == b["world_size"] == 2 and a["num_nodes"] == 2 and b["num_nodes"] == 1
    assert a["global_batch_size"] == b["global_batch_size"] == 32
    # the same data, seeds and global batch: the same training, to within float noise
    for key in ("test_accuracy", "test_loss", "val_loss"):
        assert a["metrics"][key] == pytest.approx(b["metrics"][key], abs=1e-4), key
    # the model artifact comes from the first host and carries its serving code
    model = Path(two_hosts["ModelArtifacts"]["S3ModelArtifacts"])
    listed = subprocess.run(["tar", "tzf", str(model)], capture_output=True, text=True).stdout
    assert {"model.onnx", "metadata.json", "code/inference/server.py", "code/inference.py"} <= set(
        listed.split()
    )


def test_the_sdk_driver_sets_up_each_host(
    built: BuiltDefinition, step_python: Path, tmp_path: Path
) -> None:
    uris = _mirror(built, tmp_path / "s3")
    hosts = container.training_hosts(tmp_path / "job", 2)
    props = {
        "Prepare": {
            "ProcessingJobName": "prepare-it",
            "ProcessingOutputConfig": {
                "Outputs": [{"OutputName": "dataset", "S3Output": {"S3Uri": str(tmp_path)}}]
            },
        }
    }
    args = _local(_step_args(built, n.TRAIN, {"TrainingInstanceCount": 2}, props), uris)
    for channel in args["InputDataConfig"]:
        if channel["ChannelName"] in jobs.SDK_CHANNELS:
            for host in hosts:
                shutil.copytree(
                    channel["DataSource"]["S3DataSource"]["S3Uri"],
                    host.path(f"/opt/ml/input/data/{channel['ChannelName']}"),
                )
    for host in hosts:
        container.write_training_config(
            host, hosts, "ml.m5.xlarge", ["dataset", "code"], args["HyperParameters"]
        )
    base = container.base_environment(step_python)
    launch = container.sdk_driver_launch(hosts[1], step_python, "job-it", 29999, base)
    env = launch.env
    assert (env["SM_CURRENT_HOST"], env["SM_HOST_COUNT"], env["SM_CURRENT_HOST_RANK"]) == (
        "algo-2",
        "2",
        "1",
    )
    assert env["SM_MODEL_DIR"] == str(hosts[1].root / "model")
    assert env["SM_CHANNEL_DATASET"] == str(hosts[1].root / "input" / "data" / "dataset")
    assert (env["SM_MASTER_ADDR"], env["SM_MASTER_PORT"]) == ("127.0.0.1", "29999")
    assert json.loads(env["SM_HOSTS"]) == ["algo-1", "algo-2"]
    assert launch.command[0] == str(step_python) and launch.command[1] == "training/train.py"
    epochs = launch.command.index("--epochs")
    assert launch.command[epochs + 1] == "16"  # the hyperparameters, as the driver passes them
    assert launch.cwd == hosts[1].root / "input" / "data" / "code"


def test_a_package_missing_from_the_requirements_fails_the_step_that_imports_it(
    built: BuiltDefinition, step_python: Path, raw_mnist_dir: Path, tmp_path: Path
) -> None:
    """The step environment is built from the requirements alone: drop Pillow from it and
    Prepare, the first step that imports it, fails naming the module."""
    envs = tmp_path / "envs"
    envs.mkdir()
    # a hard-link copy of the real environment as the one to sync from (same file system)
    subprocess.run(["cp", "-al", str(step_python.parents[1]), str(envs / "base")], check=True)
    pins = read_pins(SOURCE_ROOT / IMAGE_REQUIREMENTS)
    reduced = tmp_path / "requirements.txt"
    reduced.write_text("".join(f"{k}=={v}\n" for k, v in sorted(pins.items()) if k != "pillow"))
    python = ensure_environment(reduced, envs, out=lambda _m: None)
    assert python.parents[1].name != "base"

    uris = _mirror(built, tmp_path / "s3")
    args = _local(_step_args(built, n.PREPARE, {"InputDataUri": str(raw_mnist_dir)}, {}), uris)
    outputs = args["ProcessingOutputConfig"]["Outputs"]
    outputs[0]["S3Output"]["S3Uri"] = str(tmp_path / "dataset")
    work = tmp_path / "executions" / "it" / "steps" / "Prepare"
    work.mkdir(parents=True)
    job = jobs.JobEnv(env={}, s3=None, echo=lambda _m: None, python=python)
    with pytest.raises(jobs.JobFailed, match="no module 'PIL'"):
        jobs.run_processing("Prepare", args, work, job)
    # and with the full requirements the same job runs (the code bundle, not the checkout)
    full = replace(job, python=step_python)
    ok = tmp_path / "executions" / "ok" / "steps" / "Prepare"
    ok.mkdir(parents=True)
    jobs.run_processing("Prepare", args, ok, full)
    assert (tmp_path / "dataset" / "manifest.json").is_file()


def test_the_step_environment_holds_the_native_reader_and_survives_one_that_cannot_build(
    step_python: Path, tmp_path: Path
) -> None:
    """infra/image/native is built into the step environment as into the image; sources that
    do not compile leave a working environment, a warning and a record saying so."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler here: the native reader cannot be built")
    probe = "import lepton_pixels, numpy as np; print(lepton_pixels.read_uint8(b'[[[7]]]', np.zeros(1, np.uint8), (1, 1, 1), True, 0))"
    run = subprocess.run([str(step_python), "-c", probe], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "-1", run.stderr

    envs = tmp_path / "envs"
    envs.mkdir()
    subprocess.run(["cp", "-al", str(step_python.parents[1]), str(envs / "base")], check=True)
    broken = tmp_path / "native"
    broken.mkdir()
    for path in native_sources():
        shutil.copy2(path, broken)
    (broken / "lepton_pixels.c").write_text("this is not C\n")
    requirements = SOURCE_ROOT / IMAGE_REQUIREMENTS
    assert requirements_digest(requirements, broken) != requirements_digest(requirements)
    said: list[str] = []
    python = ensure_environment(requirements, envs, out=said.append, native=broken)
    assert any("could not be built" in line for line in said), said
    record = json.loads((python.parents[1] / "lepton-env.json").read_text())
    assert record["native"] is False
    run = subprocess.run([str(python), "-c", "import lepton_pixels"], capture_output=True)
    assert run.returncode != 0  # the base's copy was replaced, not kept
    imports = subprocess.run(
        [str(python), "-c", "import inference.jsonbody as j; print(j.lepton_pixels)"],
        capture_output=True,
        text=True,
        cwd=SOURCE_ROOT,
    )
    assert imports.returncode == 0 and imports.stdout.strip() == "None", imports.stderr
