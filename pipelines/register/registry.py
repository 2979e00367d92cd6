"""The local model registry: MLflow registered model versions, aliases and approval tags.

One registered model (``settings.registered_model_name``). Each version's source is the
exported files (model.onnx, model.pt, metadata.json) logged under ``exported`` in a run. The
approval workflow mirrors SageMaker's model package statuses through the tag
``approval_status`` (PendingManualApproval | Approved | Rejected) and two aliases:
``challenger`` (the latest registered version) and ``champion`` (the approved one serving).
Only an Approved version is deployable; a Rejected one never is.
"""

from __future__ import annotations

import math
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.definition.config import APPROVED, PENDING, REJECTED  # noqa: F401 (re-exported)
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, s3_client, split_s3_uri

APPROVAL_TAG = "approval_status"
ACCURACY_TAG = "accuracy"
CONTRACT_TAG = "input_contract"  # digest of classes + input shape: what a champion is compared on
CHAMPION = "champion"
CHALLENGER = "challenger"
EXPORTED_ARTIFACT_PATH = "exported"
MODEL_FILES = ("model.onnx", "model.pt", "metadata.json")
SERVING_CODE = "code"  # the serving code the artifact carries (training/export.py)
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))/?$")


class RegistryError(RuntimeError):
    """A registry request cannot be honoured; the message says why."""


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str  # MLflow version number, as MLflow returns it ("3")
    uri: str  # models:/NAME/VERSION


@dataclass(frozen=True)
class VersionInfo:
    version: str
    aliases: tuple[str, ...]
    approval_status: str
    accuracy: float | None
    created: datetime  # UTC
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict, compare=False)


def client(settings: Settings) -> Any:
    """An MlflowClient on the settings' tracking server (also the registry)."""
    from training.tracking import mlflow_client

    return mlflow_client(settings.tracking_uri)


def _ref(name: str, version: str | int) -> ModelVersionRef:
    return ModelVersionRef(name, str(version), f"models:/{name}/{version}")


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _extract_tar(tar_path: Path, dest: Path) -> Path:
    """Extract a model tarball safely ("data" filter: no links out, no absolute paths)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "r:*") as tar:
        tar.extractall(dest, filter="data")
    return _model_root(dest)


def _model_root(folder: Path) -> Path:
    """The folder holding metadata.json: ``folder`` itself or its only such subfolder."""
    if (folder / "metadata.json").is_file():
        return folder
    found = [p.parent for p in folder.rglob("metadata.json")]
    if len(found) == 1:
        return found[0]
    raise RegistryError(f"{folder}: no single metadata.json found (not an exported model)")


def _ensure_registered_model(c: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException as exc:
        if not _is_not_found(exc):
            raise
        c.create_registered_model(name, description="lepton image classifier")


def _experiment_id(c: Any, name: str) -> str:
    found = c.get_experiment_by_name(name)
    return found.experiment_id if found else c.create_experiment(name)


def register_model(
    settings: Settings,
    model_dir_or_tar: Path,
    run_id: str | None,
    tags: dict[str, str],
    accuracy: float,
) -> ModelVersionRef:
    """Register a new version (status PendingManualApproval, alias ``challenger``).

    ``tags`` should carry pipeline_execution, data_manifest_sha256 and code_version; missing
    data_manifest_sha256/code_version are taken from metadata.json. Without ``run_id`` a run is
    created in ``settings.experiment_name`` to hold the exported files.
    """
    import json

    c = client(settings)
    name = settings.registered_model_name
    with tempfile.TemporaryDirectory(prefix="lepton-register-") as tmp:
        path = Path(model_dir_or_tar)
        root = _extract_tar(path, Path(tmp)) if path.is_file() else _model_root(path)
        missing = [f for f in ("model.onnx", "metadata.json") if not (root / f).is_file()]
        if missing:
            raise RegistryError(f"{model_dir_or_tar}: missing {missing}")
        metadata = json.loads((root / "metadata.json").read_text())
        created_run = run_id is None
        if run_id is None:
            run = c.create_run(
                _experiment_id(c, settings.experiment_name),
                run_name="register",
                tags={"lepton.step": "register"},
            )
            run_id = run.info.run_id
        staged = Path(tmp) / "_staged"  # log only the model files, nothing else lying there
        staged.mkdir()
        _copy_model(root, staged)
        c.log_artifacts(run_id, str(staged), artifact_path=EXPORTED_ARTIFACT_PATH)
        if created_run:
            c.set_terminated(run_id)
    source = c.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + EXPORTED_ARTIFACT_PATH
    version_tags = {
        "data_manifest_sha256": str(metadata.get("data_manifest_sha256") or ""),
        "code_version": str(metadata.get("code_version") or ""),
        CONTRACT_TAG: input_contract(
            metadata["classes"], metadata["image_size"], metadata["channels"]
        ),
        **{k: str(v) for k, v in tags.items()},
        APPROVAL_TAG: PENDING,
    }
    if math.isfinite(float(accuracy)):  # NaN (unknown) is left out rather than stored as "nan"
        version_tags[ACCURACY_TAG] = f"{float(accuracy):.6f}"
    _ensure_registered_model(c, name)
    mv = c.create_model_version(name, source=source, run_id=run_id, tags=version_tags)
    c.set_registered_model_alias(name, CHALLENGER, mv.version)
    return _ref(name, mv.version)


def _get_version(c: Any, name: str, version: str | int) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version(name, str(version))
    except MlflowException as exc:
        if _is_not_found(exc):
            raise RegistryError(f"model {name} has no version {version}") from None
        raise


def approval_status(settings: Settings, version: str | int) -> str:
    mv = _get_version(client(settings), settings.registered_model_name, version)
    return mv.tags.get(APPROVAL_TAG, PENDING)


def approve(settings: Settings, version: str | int) -> ModelVersionRef:
    """Mark Approved and move the ``champion`` alias to this version."""
    c = client(settings)
    name = settings.registered_model_name
    mv = _get_version(c, name, version)
    c.set_model_version_tag(name, mv.version, APPROVAL_TAG, APPROVED)
    c.set_registered_model_alias(name, CHAMPION, mv.version)
    return _ref(name, mv.version)


def reject(settings: Settings, version: str | int) -> ModelVersionRef:
    """Mark Rejected; if this version was the champion, the ``champion`` alias is removed."""
    c = client(settings)
    name = settings.registered_model_name
    mv = _get_version(c, name, version)
    c.set_model_version_tag(name, mv.version, APPROVAL_TAG, REJECTED)
    if c.get_registered_model(name).aliases.get(CHAMPION) == str(mv.version):
        c.delete_registered_model_alias(name, CHAMPION)
    return _ref(name, mv.version)


def list_versions(settings: Settings) -> list[VersionInfo]:
    """Every version, newest first (empty when the model was never registered)."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registered_model_name
    try:
        aliases_of: dict[str, list[str]] = {}
        for alias, v in c.get_registered_model(name).aliases.items():
            aliases_of.setdefault(str(v), []).append(alias)
    except MlflowException as exc:
        if _is_not_found(exc):
            return []
        raise
    rows = []
    for mv in c.search_model_versions(f"name='{name}'"):
        raw_accuracy = mv.tags.get(ACCURACY_TAG)
        rows.append(
            VersionInfo(
                version=str(mv.version),
                aliases=tuple(sorted(aliases_of.get(str(mv.version), []))),
                approval_status=mv.tags.get(APPROVAL_TAG, PENDING),
                accuracy=_parse_accuracy(raw_accuracy),
                created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
                run_id=mv.run_id or None,
                tags=dict(mv.tags),
            )
        )
    return sorted(rows, key=lambda r: int(r.version), reverse=True)


def _parse_accuracy(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def champion(settings: Settings) -> ModelVersionRef | None:
    """The version the ``champion`` alias points to, if any."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registered_model_name
    try:
        mv = c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if _is_not_found(exc) or getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE":
            return None
        raise
    return _ref(name, mv.version)


def input_contract(classes: Any, image_size: Any, channels: Any) -> str:
    """What makes two models comparable on one test set: the class list (names and order) and
    the input they take. A digest, so it fits a tag whatever the number of classes."""
    import hashlib
    import json

    doc = {
        "classes": [str(c) for c in classes],
        "image_size": [int(v) for v in image_size],
        "channels": int(channels),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def champion_contract(settings: Settings) -> str | None:
    """The champion's input contract (None when there is no champion); read from its
    metadata.json for versions registered before the tag existed."""
    import json

    ref = champion(settings)
    if ref is None:
        return None
    mv = _get_version(client(settings), ref.name, ref.version)
    if mv.tags.get(CONTRACT_TAG):
        return str(mv.tags[CONTRACT_TAG])
    with tempfile.TemporaryDirectory(prefix="lepton-contract-") as tmp:
        meta = json.loads(
            (download_model(settings, ref.uri, Path(tmp)) / "metadata.json").read_text()
        )
    return input_contract(meta["classes"], meta["image_size"], meta["channels"])


def champion_accuracy(settings: Settings) -> float:
    """The champion's registered accuracy; 0.0 when there is no champion."""
    ref = champion(settings)
    if ref is None:
        return 0.0
    raw = _get_version(client(settings), ref.name, ref.version).tags.get(ACCURACY_TAG)
    return _parse_accuracy(raw) or 0.0


def is_deployable(settings: Settings, version: str | int) -> bool:
    """True only for an Approved version (a Rejected or pending one never)."""
    return approval_status(settings, version) == APPROVED


def resolve_version(settings: Settings, ref: str) -> ModelVersionRef:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` -> the version it names."""
    match = _MODELS_URI.match(ref)
    if not match:
        raise RegistryError(f"not a models:/NAME/VERSION or models:/NAME@ALIAS URI: {ref!r}")
    c = client(settings)
    name = match["name"]
    if match["version"]:
        return _ref(name, _get_version(c, name, match["version"]).version)
    from mlflow.exceptions import MlflowException

    try:
        return _ref(name, c.get_model_version_by_alias(name, match["alias"]).version)
    except MlflowException as exc:
        raise RegistryError(f"model {name} has no alias @{match['alias']}") from exc


def _copy_model(root: Path, dest: Path) -> None:
    """The model files and serving code of ``root`` into ``dest`` (replacing what is there)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in MODEL_FILES:
        (dest / f).unlink(missing_ok=True)
        if (root / f).is_file():
            shutil.copy2(root / f, dest / f)
    shutil.rmtree(dest / SERVING_CODE, ignore_errors=True)
    if (root / SERVING_CODE).is_dir():
        shutil.copytree(root / SERVING_CODE, dest / SERVING_CODE)


def _fill(dest: Path, root: Path) -> Path:
    """Copy the model of ``root`` into ``dest`` (replacing what is there)."""
    _copy_model(root, dest)
    if not (dest / "metadata.json").is_file():
        raise RegistryError(f"{root}: no metadata.json (not an exported model)")
    return dest


def download_model(settings: Settings, ref: str, dest: Path) -> Path:
    """Fetch a model into ``dest`` (model.onnx, model.pt, metadata.json); returns ``dest``.

    ``ref``: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``s3://.../model.tar.gz`` (or an
    ``s3://`` prefix holding one), a local ``model.tar.gz``, or a local model folder.
    """
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="lepton-download-") as tmp:
        work = Path(tmp)
        if ref.startswith("models:/"):
            import mlflow.artifacts

            version = resolve_version(settings, ref)
            mv = _get_version(client(settings), version.name, version.version)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source,
                dst_path=str(work / "artifacts"),
                tracking_uri=settings.tracking_uri,
                registry_uri=settings.tracking_uri,
            )
            return _fill(dest, _model_root(Path(local)))
        if is_s3_uri(ref):
            bucket, key = split_s3_uri(ref)
            if not key.endswith(".tar.gz"):
                key = key.rstrip("/") + "/model.tar.gz"
            s3_client(settings).download_file(bucket, key, str(work / "model.tar.gz"))
            return _fill(dest, _extract_tar(work / "model.tar.gz", work / "extracted"))
        path = Path(ref)
        if path.is_file():
            return _fill(dest, _extract_tar(path, work / "extracted"))
        if path.is_dir():
            if path.resolve() == dest.resolve():
                return dest
            return _fill(dest, _model_root(path))
    raise RegistryError(f"model reference not found: {ref!r}")
