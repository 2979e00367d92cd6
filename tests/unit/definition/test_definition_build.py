"""Building the pipeline definition: offline (no network at all) and deterministic, its code
bundle (what the steps mount), the errors a bad config or source tree gives at build time, and
the `lepton pipeline aws-definition` command. Fixtures: conftest.py."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from pipelines.definition.build import PLACEHOLDER_ROLE_ARN, BuiltDefinition, build_definition
from pipelines.definition.bundle import source_files
from pipelines.definition.config import PipelineConfig, aws_default
from tests.unit.definition.helpers import ROLE, all_steps

# ---- offline, deterministic -------------------------------------------------------------


def test_builds_offline_and_parses(built: BuiltDefinition, no_network: list[str]) -> None:
    assert no_network == []
    assert built.parsed()["Version"] == "2020-12-01"


def test_same_inputs_give_the_same_definition(
    built: BuiltDefinition,
    source_root: Path,
    cfg: PipelineConfig,
    no_network: list[str],
    tmp_path: Path,
) -> None:
    again = build_definition(cfg, source_root=source_root, staging_root=tmp_path)
    assert again.definition == built.definition
    assert again.bundle.objects == built.bundle.objects
    assert no_network == []


def test_code_change_changes_only_code_uris(
    built: BuiltDefinition, source_root: Path, cfg: PipelineConfig, tmp_path: Path
) -> None:
    changed = tmp_path / "src"
    shutil.copytree(source_root, changed)
    (changed / "training" / "train.py").write_text("print('train v2')\n")
    other = build_definition(cfg, source_root=changed, staging_root=tmp_path / "staging")
    assert other.definition != built.definition
    old, new = set(built.bundle.uris()), set(other.bundle.uris())
    assert len(old - new) == 1  # the code folder; sm_drivers unchanged
    strip = re.compile(r"(code|checkpoints)/[0-9a-f]{16}")  # checkpoints are per code version
    assert strip.sub(r"\1/X", other.definition) == strip.sub(r"\1/X", built.definition)


def test_code_bundle_contents(
    d: dict[str, Any], built: BuiltDefinition, cfg: PipelineConfig, source_root: Path
) -> None:
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in all_steps(d)["Train"]["Arguments"]["InputDataConfig"]
    }

    def files(uri: str) -> dict[str, bytes]:
        key = uri.split(f"s3://{cfg.bucket}/", 1)[1]
        return {
            k[len(key) + 1 :]: v for k, v in built.bundle.objects.items() if k.startswith(key + "/")
        }

    code = files(channels["code"])
    assert code == source_files(source_root)
    for entry in (
        "pipelines/prepare/step.py",
        "pipelines/evaluate/step.py",
        "pipelines/deploy/step.py",
        "infra/image/requirements.txt",
        cfg.train_entry_script,
        "pipelines/prepare/config.py",
        "training/shards.py",
    ):
        assert entry in code, entry
    assert not any("__pycache__" in k for k in code)
    drivers = files(channels["sm_drivers"])
    assert "sm_train.sh" in drivers
    # The SDK's basic script driver runs training/train.py, which starts torchrun itself with
    # ProcessesPerNode read at run time (no process count baked into the driver files).
    assert "basic_script_driver.py" in drivers["sm_train.sh"].decode()
    assert "torchrun" not in drivers.get("distributed.json", b"{}").decode()
    assert json.loads(drivers["sourcecode.json"])["entry_script"] == cfg.train_entry_script
    for uri in built.bundle.uris():
        assert uri.startswith(f"s3://{cfg.bucket}/{cfg.prefix}/code/")
        assert uri in built.definition


def test_cli_definition_command(
    no_network: list[str], source_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lepton pipeline aws-definition --setup local ... --out FILE`: a config with no role,
    no retries, no spot, a CPU instance and another training setup."""
    from pipelines.cli import pipeline_aws
    from pipelines.definition import build

    monkeypatch.setattr(build, "SOURCE_ROOT", source_root)
    monkeypatch.setenv("LEPTON_STATE_DIR", str(tmp_path / "state"))
    parser = argparse.ArgumentParser()
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("definition")  # the local one in pipelines/cli/pipeline.py
    pipeline_aws.register(actions)
    assert {"aws-definition", "upsert", "start", "wait", "status"} <= set(actions.choices)
    out = tmp_path / "definition.json"
    args = parser.parse_args(
        [
            "aws-definition",
            "--setup",
            "local",
            "--epochs",
            "3",
            "--retries",
            "0",
            "--train-setup",
            "tiny",
            "--extra-hyperparameters",
            "width=24",
            "--stock-images",
            "--image-uri",
            "null",
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    d = json.loads(out.read_text())
    params = {p["Name"]: p["DefaultValue"] for p in d["Parameters"]}
    assert params["Epochs"] == 3 and params["ProcessesPerNode"] == 2
    assert (tmp_path / "state" / "code").is_dir()  # code staged under the state folder
    steps = all_steps(d)
    train = steps["Train"]["Arguments"]
    assert train["RoleArn"] == PLACEHOLDER_ROLE_ARN
    assert "RetryPolicies" not in steps["Prepare"]
    assert "EnableManagedSpotTraining" not in train
    assert train["AlgorithmSpecification"]["TrainingImage"].endswith("-cpu-py312")
    # stock images install the project's requirements when each container starts
    prepare = steps["Prepare"]["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    assert prepare[:2] == ["bash", "-c"] and "pip install" in prepare[2]
    register = steps["Register"]["Arguments"]["InferenceSpecification"]["Containers"][0]
    assert register["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    hps = train["HyperParameters"]
    assert (hps["width"], hps["warmup_steps"]) == ("24", "10")  # override, then tiny's value
    assert no_network == []


def test_unknown_hyperparameter_fails_fast(source_root: Path, tmp_path: Path) -> None:
    cfg = PipelineConfig(extra_hyperparameters=(("widht", "8"),))
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        build_definition(cfg, source_root, tmp_path)


def test_missing_entry_point_is_reported(
    no_network: list[str], source_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    shutil.copytree(source_root, root)
    (root / "pipelines" / "evaluate" / "step.py").unlink()
    with pytest.raises(FileNotFoundError, match="pipelines.evaluate.step"):
        build_definition(PipelineConfig(), source_root=root, staging_root=tmp_path / "s")


def test_an_aws_definition_needs_an_image(source_root: Path, tmp_path: Path) -> None:
    from pipelines.definition.build import NoImageError

    with pytest.raises(NoImageError, match="lepton image build.*--stock-images"):
        build_definition(aws_default(ROLE, "b", "eu-west-1"), source_root, tmp_path)
