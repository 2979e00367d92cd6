"""The deploy step's local path on the real stack: only Approved versions are served, the
endpoint answers /ping and /invocations, redeploys replace it, and a rejected model that is
being served is taken down. The endpoint is stopped in teardown."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import model as model_command
from pipelines.deploy import local as deploy_local
from pipelines.deploy import messages
from pipelines.deploy import step as deploy
from pipelines.register import registry
from pipelines.services import process as services
from pipelines.settings import Settings

TAGS = {"pipeline_execution": "exec-d", "data_manifest_sha256": "cd" * 32, "code_version": "t"}


@pytest.fixture(scope="module")
def settings(stack_settings: Settings) -> Iterator[Settings]:
    own = stack_settings.with_overrides(registered_model_name=f"dep-{uuid.uuid4().hex[:8]}")
    deploy_local.stop_local_endpoint(own, out=lambda _m: None)  # the session stack is shared
    yield own
    deploy_local.stop_local_endpoint(own, out=lambda _m: None)


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status


def _classify(settings: Settings, images: np.ndarray) -> dict:
    body = json.dumps({"instances": images.tolist()}).encode()
    request = urllib.request.Request(
        settings.endpoint_url + "/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def _env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    for key, value in (
        ("LEPTON_MODE", "local"),
        ("LEPTON_STATE_DIR", str(settings.state_dir)),
        ("LEPTON_S3_PORT", str(settings.s3_port)),
        ("LEPTON_MLFLOW_PORT", str(settings.mlflow_port)),
        ("LEPTON_ENDPOINT_PORT", str(settings.endpoint_port)),
        ("LEPTON_MODEL_NAME", settings.registered_model_name),
    ):
        monkeypatch.setenv(key, value)
    for name in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def _lepton(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lepton")
    model_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@contextlib.contextmanager
def _calling(settings: Settings, images: np.ndarray) -> Iterator[list[str]]:
    """Classify in a loop on a thread while the block runs; yields the failures seen."""
    failures: list[str] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            try:
                _classify(settings, images)
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                failures.append(repr(exc) + (exc.read().decode() if hasattr(exc, "read") else ""))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield failures
    finally:
        done.set()
        thread.join(30)


def test_deploy_rules_and_endpoint_lifecycle(
    settings: Settings,
    trained_model_dir: Path,
    tiny_dataset_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from training.shards import load_split

    _env(monkeypatch, settings)
    name = settings.registered_model_name
    pending = registry.register_model(settings, trained_model_dir, None, TAGS, 0.9)
    rejected = registry.register_model(settings, trained_model_dir, None, TAGS, 0.9)
    registry.reject(settings, rejected.version)

    # Pending and Rejected: the step succeeds (exit 0) and deploys nothing.
    assert deploy.main(["--model-package-arn", pending.uri]) == 0
    assert messages.PENDING_MESSAGE in capsys.readouterr().out
    assert deploy.main(["--model-package-arn", rejected.uri]) == 0
    assert messages.REJECTED_MESSAGE in capsys.readouterr().out
    assert services.running_pid(settings, "endpoint", "inference") is None
    assert deploy.main(["--model-package-arn", f"models:/{name}/42"]) == 2

    # Approved: served, /ping answers 200, and predictions come back.
    registry.approve(settings, pending.version)
    # The approval checked is that of the model the reference names: version 1 of another
    # model, pending, is not deployed because this model's version 1 is approved.
    other = settings.with_overrides(registered_model_name=f"{name}-other")
    other_pending = registry.register_model(other, trained_model_dir, None, TAGS, 0.9)
    assert other_pending.version == pending.version and other_pending.uri != pending.uri
    assert deploy.main(["--model-package-arn", other_pending.uri]) == 0
    assert messages.PENDING_MESSAGE in capsys.readouterr().out
    assert services.running_pid(settings, "endpoint", "inference") is None
    assert deploy.main(["--model-package-arn", pending.uri]) == 0
    assert f"serving at {settings.endpoint_url}" in capsys.readouterr().out
    assert _get(settings.endpoint_url + "/ping") == 200
    first_pid = services.running_pid(settings, "endpoint", "inference")
    assert first_pid is not None
    assert deploy_local.deployed_info(settings)["version"] == pending.version
    model_dir = Path(deploy_local.deployed_info(settings)["model_dir"])
    assert (model_dir / "model.onnx").read_bytes() == (
        trained_model_dir / "model.onnx"
    ).read_bytes()
    images, labels = load_split(tiny_dataset_dir, "test")
    answer = _classify(settings, images[:8])
    served = [p["label"] for p in answer["predictions"]]
    assert sum(label == str(y) for label, y in zip(served, labels[:8], strict=True)) >= 5

    # Approving a new version through the CLI moves the champion and redeploys, blue/green:
    # a client calling all along never sees a failed request.
    newer = registry.register_model(settings, trained_model_dir, None, TAGS, 0.92)
    with _calling(settings, images[:2]) as failures:
        assert _lepton("model", "approve", newer.version) == 0
    assert failures == [], failures[:3]
    assert registry.champion(settings).version == newer.version
    assert deploy_local.deployed_info(settings)["version"] == newer.version
    second_pid = services.running_pid(settings, "endpoint", "inference")
    assert second_pid not in (None, first_pid) and not services.alive(first_pid)
    assert _get(settings.endpoint_url + "/ping") == 200
    assert not model_dir.exists()  # the old model's files went with the old server

    # A new model that cannot be served: the step fails with the reason, the old one serves on.
    broken_dir = tmp_path / "broken"
    shutil.copytree(trained_model_dir, broken_dir)
    (broken_dir / "model.onnx").write_bytes(b"not an onnx model")
    broken = registry.register_model(settings, broken_dir, None, TAGS, 0.95)
    registry.approve(settings, broken.version)
    assert deploy.main(["--model-package-arn", broken.uri]) == 1
    out = capsys.readouterr()
    assert "exited before serving" in out.out + out.err and "keeps serving" in out.out
    assert services.running_pid(settings, "endpoint", "inference") == second_pid
    assert _classify(settings, images[:2])["predictions"]
    assert deploy_local.deployed_info(settings)["version"] == newer.version
    registry.reject(settings, broken.version)
    registry.approve(settings, newer.version)  # champion again (rejecting moved the alias)

    # Rejecting the served champion removes the alias; with no champion left (the older
    # approved version does not become champion again by itself) the endpoint stops.
    assert _lepton("model", "reject", newer.version) == 0
    assert "stopping it" in capsys.readouterr().out
    assert services.running_pid(settings, "endpoint", "inference") is None
    assert deploy_local.deployed_info(settings) is None
    assert not registry.is_deployable(settings, newer.version)
    # The champion alias is gone, so deploying "the champion" is an invalid reference.
    assert deploy.main(["--model-package-arn", f"models:/{name}@champion"]) == 2
