"""`lepton pipeline run|resume` locally: services, data, the definition, the runner, a summary.

The definition executed here is the very JSON `lepton pipeline upsert` sends to SageMaker.
"""

from __future__ import annotations

import io
import json
import math
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipelines import services
from pipelines.config import PipelineConfig
from pipelines.runner.engine import LocalRunner
from pipelines.runner.state import Execution
from pipelines.settings import Settings
from pipelines.storage import s3_client, split_s3_uri

Printer = Callable[[str], None]
DEFAULT_DATASET = "mnist-5k"


@dataclass(frozen=True)
class RunRequest:
    """What the user asked of `pipeline run`; unset values keep the config's defaults."""

    data: str | None = None  # s3:// prefix of raw images; None -> the imported mnist-5k
    epochs: int | None = None
    nproc: int = 2  # training processes on this machine
    accuracy_threshold: float | None = None
    manual_approval: bool = False  # locally a model that passes the gate is approved unless set
    import_limit: int | None = None  # import only this many images (tests, quick looks)
    use_cache: bool = True
    extra_parameters: tuple[tuple[str, str], ...] = ()


def local_config(settings: Settings, request: RunRequest) -> PipelineConfig:
    cfg = PipelineConfig(
        bucket=settings.artifact_bucket,
        region=settings.region,
        input_data_uri=request.data or f"s3://{settings.data_bucket}/raw/{DEFAULT_DATASET}",
        processes_per_node=request.nproc,
        tracking_uri=settings.tracking_uri,
        model_package_group=settings.registered_model_name,
        model_approval_status="PendingManualApproval" if request.manual_approval else "Approved",
    )
    if request.epochs is not None:
        cfg = replace(cfg, epochs=request.epochs)
    if request.accuracy_threshold is not None:
        cfg = replace(cfg, accuracy_threshold=request.accuracy_threshold)
    return cfg


def ensure_data(settings: Settings, uri: str, limit: int | None, out: Printer) -> None:
    """Import the built-in dataset when the default raw prefix is empty."""
    bucket, prefix = split_s3_uri(uri)
    listed = s3_client(settings).list_objects_v2(
        Bucket=bucket, Prefix=prefix.rstrip("/") + "/", MaxKeys=1
    )
    if listed.get("KeyCount", 0):
        return
    name = prefix.rstrip("/").rsplit("/", 1)[-1]
    if name not in ("mnist-5k", "digits"):
        raise FileNotFoundError(f"no images under {uri}; import some with `lepton data import`")
    from pipelines.data.importers import import_dataset

    out(f"importing {name} into {uri} (first run)")
    import_dataset(name, uri, settings, limit=limit, log=out)


def build_definition(settings: Settings, cfg: PipelineConfig) -> dict[str, Any]:
    from pipelines.definition import definition_json

    return json.loads(definition_json(cfg, settings))


def champion_parameter(settings: Settings, cfg: PipelineConfig) -> float:
    from pipelines import registry

    champion = registry.champion_accuracy(settings)
    return cfg.minimum_champion_accuracy(champion if champion > 0 else None)


def run(settings: Settings, request: RunRequest, out: Printer = print) -> dict[str, Any]:
    t0 = time.monotonic()
    services.up(settings, out=out)
    cfg = local_config(settings, request)
    if request.data is None:
        ensure_data(settings, cfg.input_data_uri, request.import_limit, out)
    definition = build_definition(settings, cfg)
    parameters: dict[str, Any] = {
        "MinimumChampionAccuracy": champion_parameter(settings, cfg),
        **dict(request.extra_parameters),
    }
    from pipelines.runner.engine import parameter_values

    execution = Execution.new(
        settings.state_dir, cfg.pipeline_name, parameter_values(definition, parameters)
    )
    (execution.folder / "definition.json").write_text(json.dumps(definition, indent=1))
    out(f"execution {execution.id} (state: {execution.folder})")
    return _execute(settings, definition, execution, request.use_cache, out, t0)


def resume(settings: Settings, execution_id: str, out: Printer = print) -> dict[str, Any]:
    t0 = time.monotonic()
    services.up(settings, out=out)
    execution = Execution.load(settings.state_dir, execution_id)
    if execution.status == "Succeeded":
        out(f"execution {execution_id} already succeeded; nothing to resume")
    definition = json.loads((execution.folder / "definition.json").read_text())
    return _execute(settings, definition, execution, True, out, t0)


def _execute(
    settings: Settings,
    definition: dict[str, Any],
    execution: Execution,
    use_cache: bool,
    out: Printer,
    t0: float,
) -> dict[str, Any]:
    runner = LocalRunner(settings, definition, execution, out=out, use_cache=use_cache)
    runner.run()
    summary = summarize(settings, execution, time.monotonic() - t0, out)
    (settings.state_dir / "last-run.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, out)
    return summary


def _find(execution: Execution, step_type: str) -> Any:
    return next((r for r in execution.steps.values() if r.type == step_type), None)


def summarize(
    settings: Settings, execution: Execution, total_s: float, out: Printer
) -> dict[str, Any]:
    accuracy = None
    for record in execution.steps.values():
        for doc in record.property_files.values():
            metrics = (
                doc.get("multiclass_classification_metrics", {}) if isinstance(doc, dict) else {}
            )
            if "accuracy" in metrics:
                accuracy = float(metrics["accuracy"]["value"])
    gate = _find(execution, "Condition")
    register = _find(execution, "RegisterModel")
    deployed = any(
        r.status == "Succeeded" and "deploy" in r.name.lower() for r in execution.steps.values()
    )
    endpoint_up = _ping(settings.endpoint_url) if deployed else False
    summary: dict[str, Any] = {
        "execution_id": execution.id,
        "status": execution.status,
        "failure": execution.failure,
        "accuracy": accuracy,
        "gate_passed": gate.properties.get("Outcome") if gate and gate.properties else None,
        "gate_reasons": gate.properties.get("Reasons", []) if gate and gate.properties else [],
        "model_version": register.properties.get("ModelPackageVersion")
        if register and register.properties
        else None,
        "endpoint_url": settings.endpoint_url if endpoint_up else None,
        "mlflow_url": settings.tracking_uri,
        "step_seconds": {n: r.seconds for n, r in execution.steps.items() if r.seconds is not None},
        "step_status": {n: r.status for n, r in execution.steps.items()},
        "cache": {n: r.cache_note for n, r in execution.steps.items() if r.cache_note},
        "total_seconds": round(total_s, 1),
    }
    if endpoint_up:
        summary["sample_predictions"] = classify_samples(settings, execution, out)
    return summary


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ping", timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False


def held_out_images(settings: Settings, execution: Execution) -> tuple[list[str], Any, Any]:
    """(classes, uint8 NHWC images, labels) of the test split this execution trained on.

    Read from the Prepare step's output in S3, so it works when every step came from cache.
    """
    from pipelines.runner import transfer
    from training.shards import load_split, read_manifest

    prepare = next(r for r in execution.steps.values() if r.type == "Processing")
    outputs = prepare.properties["ProcessingOutputConfig"]["Outputs"]
    uri = next(o["S3Output"]["S3Uri"] for o in outputs if o["OutputName"] == "dataset")
    folder = execution.folder / "held-out"
    if not (folder / "manifest.json").exists():
        transfer.download(s3_client(settings), uri, folder)
    return read_manifest(folder)["classes"], *load_split(folder, "test")


def classify_samples(
    settings: Settings, execution: Execution, out: Printer, count: int = 8
) -> list[dict[str, Any]]:
    """Send a few held-out test images to the endpoint as PNG and report the answers."""
    from PIL import Image

    classes, images, labels = held_out_images(settings, execution)
    answers = []
    for i in range(min(count, len(labels))):
        pixels = images[i][..., 0] if images.shape[-1] == 1 else images[i]
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        request = urllib.request.Request(
            settings.endpoint_url + "/invocations",
            data=buf.getvalue(),
            headers={"Content-Type": "image/png", "Accept": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = json.loads(resp.read())
        top = _top_label(body)
        answers.append({"true": classes[int(labels[i])], "predicted": top})
    right = sum(a["true"] == a["predicted"] for a in answers)
    out(f"endpoint classified {right}/{len(answers)} held-out test images correctly")
    return answers


def _top_label(body: Any) -> str | None:
    """The top label of the first prediction in an endpoint answer (docs/contracts.md)."""
    predictions = body.get("predictions") if isinstance(body, dict) else None
    return str(predictions[0]["label"]) if predictions else None


def print_summary(summary: dict[str, Any], out: Printer) -> None:
    acc = summary["accuracy"]
    out("")
    out(f"pipeline {summary['status']}  (execution {summary['execution_id']})")
    if summary["failure"]:
        out(f"  failure:        {summary['failure'].splitlines()[0]}")
    out(
        f"  accuracy:       {acc:.4f}"
        if acc is not None and not math.isnan(acc)
        else "  accuracy:       -"
    )
    out(f"  gate passed:    {summary['gate_passed']}  {'; '.join(summary['gate_reasons'])}")
    out(f"  model version:  {summary['model_version']}")
    out(f"  endpoint:       {summary['endpoint_url'] or '-'}")
    out(f"  MLflow:         {summary['mlflow_url']}")
    for name, secs in summary["step_seconds"].items():
        out(f"  {name:<22} {secs:7.1f}s  {summary['step_status'][name]}")
    out(f"  total          {summary['total_seconds']:14.1f}s")


def last_run_path(settings: Settings) -> Path:
    return settings.state_dir / "last-run.json"
