"""`lepton pipeline run|resume` locally: services, data, the definition, the runner, the record.

The definition executed here is the very JSON `lepton pipeline upsert` sends to SageMaker; the
values the user gives are execution parameters, as `lepton pipeline start` passes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.definition import names as n
from pipelines.definition.config import PipelineConfig, local_default
from pipelines.definition.parameters import validate
from pipelines.runner.engine import LocalRunner
from pipelines.runner.plan import RunRequest, plan_run
from pipelines.runner.record import RunRecord, StepSummary
from pipelines.runner.samples import classify_samples
from pipelines.runner.state import Execution
from pipelines.services import control as services
from pipelines.services.definitions import TRACKING_SERVICE
from pipelines.services.process import http_ok
from pipelines.settings import Settings
from pipelines.storage import s3_client, split_s3_uri

Printer = Callable[[str], None]
__all__ = ["RunRequest", "run", "resume", "summarize", "local_config"]


def local_config(settings: Settings) -> PipelineConfig:
    """The definition the local runner executes (`local_default`)."""
    return local_default(settings)


def execution_parameters(
    settings: Settings, cfg: PipelineConfig, request: RunRequest, given: dict[str, Any]
) -> dict[str, Any]:
    """The run's parameters, validated, with the local defaults a run adds: approval at once
    (unless --manual-approval) and the gate's MinimumChampionAccuracy (of the run's model)."""
    given = dict(given)
    settings = settings.with_overrides(
        registered_model_name=str(given.get("ModelPackageGroupName", cfg.model_package_group))
    )
    if "ModelApprovalStatus" not in given:
        given["ModelApprovalStatus"] = (
            "PendingManualApproval" if request.manual_approval else "Approved"
        )
    if "MinimumChampionAccuracy" not in given:
        given["MinimumChampionAccuracy"] = champion_floor(settings, cfg)
    return validate(given, cfg)


def champion_floor(settings: Settings, cfg: PipelineConfig) -> float:
    from pipelines.register import registry

    champion = registry.champion_accuracy(settings)
    return cfg.champion_floor(champion if champion > 0 else None)


def build_definition(settings: Settings, cfg: PipelineConfig) -> dict[str, Any]:
    """The definition JSON, with its code bundle uploaded to the settings' S3 (what upsert does
    on AWS): the steps run that bundle, as their containers would."""
    from pipelines.definition.build import build_definition as build

    built = build(cfg, staging_root=settings.state_dir / "code")
    built.bundle.upload(s3_client(settings))
    return built.parsed()


def step_python(settings: Settings, definition: dict[str, Any], out: Printer) -> Path:
    """The step environment of the definition's code bundle (its image requirements.txt)."""
    from pipelines.definition.bundle import IMAGE_REQUIREMENTS, code_bundle_uri
    from pipelines.runner.environment import ensure_environment

    uri = code_bundle_uri(definition)
    bucket, key = split_s3_uri(f"{uri.rstrip('/')}/{IMAGE_REQUIREMENTS}")
    body = s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
    folder = settings.state_dir / "requirements"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(body).hexdigest()[:16]}.txt"
    path.write_bytes(body)
    return ensure_environment(path, settings.env_root, out)


def run(settings: Settings, request: RunRequest, out: Printer = print) -> RunRecord:
    t0 = time.monotonic()
    tracking_ready = _services_up(settings, out)
    plan = plan_run(settings, local_config(settings), request, out)
    cfg = plan.cfg
    parameters = execution_parameters(settings, cfg, request, plan.parameters)
    definition = build_definition(settings, cfg)
    from pipelines.runner.engine import parameter_values

    execution = Execution.new(
        settings.state_dir, cfg.pipeline_name, parameter_values(definition, parameters)
    )
    (execution.folder / "definition.json").write_text(json.dumps(definition, indent=1))
    (execution.folder / "data.json").write_text(json.dumps(plan.data, indent=1))
    out(f"execution {execution.id} (state: {execution.folder})")
    return _execute(settings, definition, execution, request.use_cache, out, t0, tracking_ready)


def _services_up(settings: Settings, out: Printer) -> Callable[[], None]:
    """S3 up and healthy; MLflow started, and a function that waits for it (the runner calls
    it before the first step that tracks, so its start overlaps the import and Prepare)."""
    return services.up(settings, out=out, background=(TRACKING_SERVICE,))[TRACKING_SERVICE]


def resume(settings: Settings, execution_id: str, out: Printer = print) -> RunRecord:
    t0 = time.monotonic()
    tracking_ready = _services_up(settings, out)
    execution = Execution.load(settings.state_dir, execution_id)
    if execution.status == "Succeeded":
        out(f"execution {execution_id} already succeeded; nothing to resume")
    definition = json.loads((execution.folder / "definition.json").read_text())
    return _execute(settings, definition, execution, True, out, t0, tracking_ready)


def _execute(
    settings: Settings,
    definition: dict[str, Any],
    execution: Execution,
    use_cache: bool,
    out: Printer,
    t0: float,
    tracking_ready: Callable[[], None],
) -> RunRecord:
    python = step_python(settings, definition, out)
    LocalRunner(
        settings, definition, execution, python, out, use_cache, tracking_ready=tracking_ready
    ).run()
    record = summarize(settings, execution, time.monotonic() - t0, out)
    record.write(settings.state_dir)
    for line in record.text():
        out(line)
    return record


def summarize(settings: Settings, execution: Execution, total_s: float, out: Printer) -> RunRecord:
    """The run record of a local execution (and a last check of the endpoint it deployed)."""
    from pipelines.evaluate.report import accuracy_of

    steps = execution.steps
    evaluate = steps.get(n.EVALUATE)
    evaluation = evaluate.property_files.get(n.EVALUATION_REPORT) if evaluate else None
    gate = steps.get(n.GATE)
    register = steps.get(n.REGISTER)
    train = steps.get(n.TRAIN)
    lepton = (train.properties or {}).get("Lepton", {}) if train else {}
    topology = lepton.get("topology")
    deployed = n.DEPLOY in steps and steps[n.DEPLOY].status == "Succeeded"
    endpoint_up = deployed and http_ok(settings.endpoint_url + "/ping", timeout_s=3)
    gate_props = gate.properties if gate and gate.properties else {}
    samples = classify_samples(settings, execution, out) if endpoint_up else []
    return RunRecord(
        where="local",
        pipeline_name=execution.pipeline_name,
        execution_id=execution.id,
        status=execution.status,
        failure=execution.failure,
        accuracy=accuracy_of(evaluation),
        gate_passed=gate_props.get("Outcome"),
        gate_reasons=tuple(gate_props.get("Reasons", [])),
        model_version=(register.properties or {}).get("ModelPackageVersion") if register else None,
        endpoint_url=settings.endpoint_url if endpoint_up else None,
        mlflow_url=settings.tracking_uri,
        parameters=dict(execution.parameters),
        steps={
            name: StepSummary(r.type, r.status, r.seconds, r.cache_note, r.message)
            for name, r in steps.items()
        },
        total_seconds=round(total_s, 1),
        training_topology=topology,
        tracking=lepton.get("training", {}).get("tracking"),
        model_name=(register.properties or {}).get("ModelPackageGroupName") if register else None,
        data=_read_json(execution.folder / "data.json"),
        sample_predictions=tuple(samples),
        batch=_batch_report(settings, steps.get(n.BATCH)),
    )


def _batch_report(settings: Settings, batch: Any) -> dict[str, Any] | None:
    """What the Batch step reported, with where its results are (None when it did not run)."""
    if batch is None or batch.status != "Succeeded" or not batch.properties:
        return None
    from pipelines.batch.job import read_report, results_uri

    output = results_uri(batch.properties["AppSpecification"]["ContainerArguments"])
    try:
        return {"output": output, **read_report(settings, output)}
    except Exception as exc:  # noqa: BLE001 - the record says what it could not read
        return {"output": output, "error": f"no report: {exc}"}


def _read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}
