"""`lepton pipeline preflight` offline, and `upsert` refusing a definition that fails it:
the same config `upsert` builds, one line per check, the exit status. No AWS call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.aws.preflight import FAILED, OK, SKIPPED
from tests.unit.test_preflight import EXPECTED_APIS as STEPS
from tests.unit.test_preflight import ROLE


@pytest.fixture
def cli(
    project_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str, str]]:
    from pipelines.definition import build

    monkeypatch.setattr(build, "SOURCE_ROOT", project_source)
    monkeypatch.setenv("LEPTON_STATE_DIR", str(tmp_path / "state"))
    for name in (
        "LEPTON_MODE",
        "LEPTON_SAGEMAKER_ROLE_ARN",
        "LEPTON_MODEL_NAME",
        "LEPTON_PIPELINE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        from pipelines.cli import main

        code = main(["pipeline", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


IMAGE = ("--image-uri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/lepton:gpu-0123")


def test_cli_preflight_offline(
    cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli("preflight", "--offline", "--role-arn", ROLE, *IMAGE, capsys=capsys)
    lines = out.splitlines()
    assert code == 0, out
    assert lines[0] == "preflight of pipeline lepton (setup aws; offline: --offline given)"
    assert f"execution role {ROLE} configured: {OK}" in lines
    for name, api in STEPS.items():
        assert any(line.startswith(f"step {name} (") and f"{api}): ok" in line for line in lines)
    assert f"execution role lepton-pipeline: {SKIPPED}: offline" in lines
    assert f"model package group lepton-classifier: {SKIPPED}: offline" in lines
    assert lines[-1] == "preflight passed"

    # no image: one failed check saying how to get one
    code, out, _ = cli("preflight", "--offline", "--role-arn", ROLE, capsys=capsys)
    assert code == 1 and "image: FAILED: the pipeline has no container image" in out

    # --stack reads the stack from AWS: refused offline, before anything is built
    code, _, err = cli("preflight", "--offline", "--stack", "lepton", capsys=capsys)
    assert code == 1
    assert "--stack reads the stack's outputs from AWS; not possible offline" in err

    # the local setup has no role: the one failure, and the exit status says so
    code, out, _ = cli("preflight", "--setup", "local", capsys=capsys)
    assert code == 1
    assert "offline: LEPTON_MODE is not aws" in out.splitlines()[0]
    assert [line for line in out.splitlines() if f": {FAILED}" in line] == [
        "execution role: FAILED: none configured: set LEPTON_SAGEMAKER_ROLE_ARN (`lepton infra "
        "outputs --format env` exports it), --role-arn, or --stack"
    ]


def test_cli_flags_reach_the_checked_definition_and_upsert_refuses_it(
    cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = ("--role-arn", ROLE, *IMAGE, "--processing-instance-type", "ml.x9.huge")
    code, out, _ = cli("preflight", "--offline", *bad, capsys=capsys)
    assert code == 1
    failed = [line for line in out.splitlines() if f": {FAILED}: " in line]
    assert {line.split(": FAILED: ")[0] for line in failed} == {
        "step Prepare (Processing, CreateProcessingJob)",
        "step Evaluate (Processing, CreateProcessingJob)",
        "step Deploy (Processing, CreateProcessingJob)",
    }
    assert all("ProcessingResources.ClusterConfig.InstanceType: 'ml.x9.huge'" in f for f in failed)
    # upsert checks the same definition first and stops before any AWS call
    code, out, err = cli("upsert", *bad, capsys=capsys)
    assert (code, out) == (1, "")
    assert "upsert refused: the definition fails preflight (--skip-preflight to force)" in err
    assert "step Prepare (Processing, CreateProcessingJob): FAILED" in err
