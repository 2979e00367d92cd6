"""The MLflow registry on the real local stack: registration, approval rules, the gate against
the champion, model download by every kind of reference, and `lepton model` commands."""

from __future__ import annotations

import argparse
import json
import tarfile
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.cli import model as model_command
from pipelines.definition.build import build_definition
from pipelines.register import registry
from pipelines.runner.engine import flatten_steps, parameter_values
from pipelines.runner.expressions import Context, evaluate_condition
from pipelines.runner.run import champion_floor, local_config
from pipelines.settings import Settings
from pipelines.storage import s3_client

TAGS = {"pipeline_execution": "exec-1", "data_manifest_sha256": "ab" * 32, "code_version": "t1"}


@pytest.fixture()
def settings(stack_settings: Settings) -> Settings:
    """The stack, with a registered model of its own (tests do not see each other's versions)."""
    return stack_settings.with_overrides(registered_model_name=f"it-{uuid.uuid4().hex[:8]}")


def _register(settings: Settings, model: Path, accuracy: float, **tags: str) -> str:
    return registry.register_model(settings, model, None, {**TAGS, **tags}, accuracy).version


def test_register_sets_tags_and_challenger(settings: Settings, trained_model_dir: Path) -> None:
    assert registry.list_versions(settings) == []
    ref = registry.register_model(settings, trained_model_dir, None, TAGS, 0.91)
    assert ref.version == "1" and ref.uri == f"models:/{settings.registered_model_name}/1"
    (row,) = registry.list_versions(settings)
    assert row.approval_status == registry.PENDING and row.accuracy == pytest.approx(0.91)
    assert row.aliases == (registry.CHALLENGER,)
    for key, value in TAGS.items():
        assert row.tags[key] == value
    assert registry.champion(settings) is None and registry.champion_accuracy(settings) == 0.0
    assert not registry.is_deployable(settings, 1)
    second = _register(settings, trained_model_dir, 0.93)
    rows = registry.list_versions(settings)
    assert [r.version for r in rows] == [second, "1"]  # newest first
    assert rows[0].aliases == (registry.CHALLENGER,) and rows[1].aliases == ()


def test_register_a_tarball_with_a_training_run(
    settings: Settings, trained_model_dir: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    run_id = client.create_run(client.create_experiment(f"reg-{uuid.uuid4().hex[:6]}")).info.run_id
    tar_path = tmp_path / "model.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(trained_model_dir, arcname="model")  # wrapped in a folder: still found
    ref = registry.register_model(settings, tar_path, run_id, TAGS, float("nan"))
    (row,) = registry.list_versions(settings)
    assert row.run_id == run_id and ref.version == row.version
    assert row.accuracy is None and registry.ACCURACY_TAG not in row.tags  # unknown, not "nan"
    registry.approve(settings, ref.version)
    assert registry.champion_accuracy(settings) == 0.0
    exported = {f.path for f in client.list_artifacts(run_id, registry.EXPORTED_ARTIFACT_PATH)}
    # the model files and the serving code the artifact carries, nothing else lying there
    assert exported == {f"exported/{n}" for n in registry.MODEL_FILES} | {"exported/code"}


def test_approve_reject_rules(settings: Settings, trained_model_dir: Path) -> None:
    v1, v2 = (_register(settings, trained_model_dir, a) for a in (0.90, 0.95))
    registry.approve(settings, v1)
    assert registry.champion(settings).version == v1
    assert registry.is_deployable(settings, v1) and not registry.is_deployable(settings, v2)
    assert registry.champion_accuracy(settings) == pytest.approx(0.90)
    registry.approve(settings, v2)  # approval moves the champion
    assert registry.champion(settings).version == v2
    assert registry.is_deployable(settings, v1)  # still approved, just not champion
    registry.reject(settings, v1)  # rejecting a non-champion leaves the champion alone
    assert registry.champion(settings).version == v2 and not registry.is_deployable(settings, v1)
    registry.reject(settings, v2)  # a rejected champion loses the alias
    assert registry.champion(settings) is None and registry.champion_accuracy(settings) == 0.0
    assert not registry.is_deployable(settings, v2)
    statuses = {r.version: r.approval_status for r in registry.list_versions(settings)}
    assert statuses == {v1: registry.REJECTED, v2: registry.REJECTED}
    with pytest.raises(registry.RegistryError, match="no version 99"):
        registry.approve(settings, 99)


def test_gate_refuses_a_worse_challenger(
    settings: Settings, trained_model_dir: Path, tmp_path: Path
) -> None:
    champion = _register(settings, trained_model_dir, 0.95)
    registry.approve(settings, champion)
    worse_accuracy = 0.90
    # The real gate: the QualityGate condition of the pipeline definition, evaluated by the
    # local runner, with MinimumChampionAccuracy computed from the registry as `run` does.
    cfg = replace(local_config(settings), accuracy_threshold=0.8, champion_tolerance=0.02)
    definition = json.loads(build_definition(cfg, staging_root=tmp_path / "code").definition)
    gate = flatten_steps(definition)["QualityGate"].body["Arguments"]["Conditions"]
    params = parameter_values(
        definition, {"MinimumChampionAccuracy": champion_floor(settings, cfg)}
    )

    def decide(accuracy: float) -> tuple[bool, list[str]]:
        report = {"multiclass_classification_metrics": {"accuracy": {"value": accuracy}}}
        ctx = Context(params, {}, {}, {"Evaluate": {"EvaluationReport": report}})
        results = [evaluate_condition(c, ctx) for c in gate]
        return all(ok for ok, _ in results), [reason for _, reason in results]

    passed, reasons = decide(worse_accuracy)
    assert not passed and "0.9000 >= 0.9300: no" in reasons  # champion 0.95 - tolerance 0.02
    assert decide(0.96) == (True, ["0.9600 >= 0.8000: yes", "0.9600 >= 0.9300: yes"])
    # Even if a worse challenger gets registered, nothing approves it automatically.
    challenger = _register(settings, trained_model_dir, worse_accuracy)
    assert registry.champion(settings).version == champion
    assert not registry.is_deployable(settings, challenger)


def _same_files(folder: Path, reference: Path) -> None:
    for name in registry.MODEL_FILES:
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name


def test_download_by_every_reference(
    settings: Settings, trained_model_dir: Path, tmp_path: Path
) -> None:
    version = _register(settings, trained_model_dir, 0.9)
    registry.approve(settings, version)
    name = settings.registered_model_name
    for i, ref in enumerate(
        (f"models:/{name}@champion", f"models:/{name}/{version}", str(trained_model_dir))
    ):
        _same_files(registry.download_model(settings, ref, tmp_path / f"d{i}"), trained_model_dir)
    tar_path = tmp_path / "model.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for n in registry.MODEL_FILES:
            tar.add(trained_model_dir / n, arcname=n)
    _same_files(registry.download_model(settings, str(tar_path), tmp_path / "t"), trained_model_dir)
    key = f"registry-it/{uuid.uuid4().hex}/model.tar.gz"
    s3_client(settings).upload_file(str(tar_path), settings.artifact_bucket, key)
    uri = f"s3://{settings.artifact_bucket}/{key}"
    _same_files(registry.download_model(settings, uri, tmp_path / "s3"), trained_model_dir)
    _same_files(
        registry.download_model(settings, uri.rsplit("/", 1)[0], tmp_path / "s3p"),
        trained_model_dir,
    )
    with pytest.raises(registry.RegistryError, match="no alias @nope"):
        registry.download_model(settings, f"models:/{name}@nope", tmp_path / "x")
    with pytest.raises(registry.RegistryError, match="not found"):
        registry.download_model(settings, str(tmp_path / "missing"), tmp_path / "x")


def _cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("LEPTON_MODE", "local")
    monkeypatch.setenv("LEPTON_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LEPTON_S3_PORT", str(settings.s3_port))
    monkeypatch.setenv("LEPTON_MLFLOW_PORT", str(settings.mlflow_port))
    monkeypatch.setenv("LEPTON_ENDPOINT_PORT", str(settings.endpoint_port))
    monkeypatch.setenv("LEPTON_MODEL_NAME", settings.registered_model_name)
    for name in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def _lepton(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lepton")
    model_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_model_commands(
    settings: Settings,
    trained_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _cli_env(monkeypatch, settings)
    assert _lepton("model", "list") == 0
    assert "no versions" in capsys.readouterr().out
    v1 = _register(settings, trained_model_dir, 0.9123)
    assert _lepton("model", "approve", v1, "--no-deploy") == 0
    assert "alias champion -> version 1" in capsys.readouterr().out
    v2 = _register(settings, trained_model_dir, 0.8)
    assert _lepton("model", "reject", v2, "--no-deploy") == 0
    assert _lepton("model", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    row1 = next(line for line in lines if line.startswith("1 "))
    row2 = next(line for line in lines if line.startswith("2 "))
    assert "Approved" in row1 and "0.9123" in row1 and "champion" in row1
    assert "Rejected" in row2 and "challenger" in row2
    assert json.loads(json.dumps(registry.list_versions(settings)[0].tags))  # tags are plain str
