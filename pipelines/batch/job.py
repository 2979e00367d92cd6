"""`lepton batch predict IN OUT [--model REF]`: the pipeline's Batch step, run as a job of its own.

The job is the Batch step of the pipeline definition itself (definition/batch.py), its
references filled in: the input and output prefixes for the BatchInputUri/BatchOutputUri
parameters, the model's artifact for Train's S3ModelArtifacts, and its version for Register's
ModelPackageArn. So the command runs exactly what the pipeline runs, in the same container:
locally the runner executes it (the step environment, inputs fetched from the local S3); on
AWS it is a CreateProcessingJob request on the project's image.

Model references: locally what `lepton serve` takes (`models:/NAME@champion`,
`models:/NAME/VERSION`, `s3://.../model.tar.gz`, a folder); the default is the champion. On
AWS a model package ARN, or by default the newest Approved package of the group.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipelines.batch.config import option_flags
from pipelines.definition import names as n
from pipelines.definition.parameters import BY_FIELD
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, s3_client, split_s3_uri

Printer = Callable[[str], None]
INPUT, OUTPUT = BY_FIELD["batch_input_uri"].name, BY_FIELD["batch_output_uri"].name


class BatchJobError(RuntimeError):
    """The job could not start or did not complete; the message says why."""


def job_name(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now or time.time()))
    return f"lepton-batch-{stamp}"


def job_arguments(
    definition: Mapping[str, Any],
    *,
    input_uri: str,
    output_uri: str,
    model_data_url: str,
    model_version: str,
    job_id: str,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The CreateProcessingJob request of the definition's Batch step for these values;
    `options` are further BatchConfig fields for this job (name -> value, None: the default)."""
    from pipelines.runner.engine import flatten_steps, parameter_values
    from pipelines.runner.expressions import Context, resolve

    spec = flatten_steps(definition).get(n.BATCH)
    if spec is None:
        raise BatchJobError("the pipeline definition has no Batch step")
    ctx = Context(
        parameters={
            **parameter_values(definition, {}),
            INPUT: input_uri,
            OUTPUT: output_uri,
        },
        execution={"PipelineExecutionId": job_id},
        step_properties={
            n.TRAIN: {"ModelArtifacts": {"S3ModelArtifacts": model_data_url}},
            n.REGISTER: {"ModelPackageArn": model_version},
        },
    )
    args = dict(resolve(spec.body["Arguments"], ctx))
    extra = option_flags(options)
    args["AppSpecification"] = {
        **args["AppSpecification"],
        "ContainerArguments": [*args["AppSpecification"]["ContainerArguments"], *extra],
    }
    return args


# ---- locally ----------------------------------------------------------------------------------
def local_model(settings: Settings, ref: str, root: str, work: Path) -> tuple[str, str]:
    """(s3:// URI of a model.tar.gz in the local S3, version named in the results) of `ref`.

    The artifact is repacked and stored content-addressed, so the same model is one object
    however often it is used, and the job reads it as the pipeline's Batch step reads Train's."""
    from pipelines.register.registry import download_model, resolve_version
    from training.model_tar import pack_model_tar

    version = ref
    if ref.startswith("models:/"):
        found = resolve_version(settings, ref)
        version = f"models:/{found.name}/{found.version}"
    folder = download_model(settings, ref, work / "model")
    digest = pack_model_tar(folder, work / "model.tar.gz")
    uri = f"{root}/batch/models/{digest[:16]}/model.tar.gz"
    bucket, key = split_s3_uri(uri)
    s3_client(settings).upload_file(str(work / "model.tar.gz"), bucket, key)
    return uri, version


def run_local(
    settings: Settings,
    input_uri: str,
    output_uri: str,
    ref: str,
    options: Mapping[str, Any],
    out: Printer = print,
) -> dict[str, Any]:
    """Run the Batch step locally; returns the job's `_batch_report.json`."""
    from pipelines.runner import jobs
    from pipelines.runner.jobs import job_environment
    from pipelines.runner.run import build_definition, local_config, step_python
    from pipelines.services import control as services

    services.up(settings, out=out)
    cfg = local_config(settings)
    definition = build_definition(settings, cfg)
    python = step_python(settings, definition, out)
    name = job_name()
    work = settings.state_dir / "batch" / name
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lepton-batch-") as tmp:
        model_uri, version = local_model(settings, ref, cfg.s3_root, Path(tmp))
    args = job_arguments(
        definition,
        input_uri=_local_uri(input_uri),
        output_uri=_local_uri(output_uri),
        model_data_url=model_uri,
        model_version=version,
        job_id=name,
        options=options,
    )
    out(f"{name}: {version} on {input_uri} -> {output_uri} (log: {work / 'step.log'})")
    job = jobs.JobEnv(
        env=job_environment(settings, name), s3=s3_client(settings), echo=out, python=python
    )
    try:
        jobs.run_processing(n.BATCH, args, work, job)
    except jobs.JobFailed as exc:
        raise BatchJobError(f"{name} failed: {exc} (log: {work / 'step.log'})") from exc
    return read_report(settings, _local_uri(output_uri))


def _local_uri(uri: str) -> str:
    """s3:// as given; a folder as an absolute path (the local job runs on this machine)."""
    return uri if is_s3_uri(uri) else str(Path(uri).expanduser().resolve())


def results_uri(container_arguments: list[str]) -> str:
    """Where a Batch job with these arguments writes its results."""
    from pipelines.batch.config import BatchConfig
    from training.serialize import from_args

    cfg = from_args(BatchConfig, [str(a) for a in container_arguments])
    return cfg.output or cfg.default_output


def read_report(settings: Settings, output: str) -> dict[str, Any]:
    """The `_batch_report.json` under a Batch job's output prefix or folder."""
    from pipelines.batch.core import REPORT
    from pipelines.prepare.reading import read_bytes_whole

    return dict(json.loads(read_bytes_whole(output.rstrip("/") + "/" + REPORT, settings)))
