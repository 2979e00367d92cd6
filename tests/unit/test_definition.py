"""The pipeline definition: built offline (no network at all), and its JSON is what the local
runner and SageMaker expect: steps, parameters, property references, code bundle."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipelines.definition import names as n
from pipelines.definition.build import PLACEHOLDER_ROLE_ARN, BuiltDefinition, build_definition
from pipelines.definition.bundle import source_files
from pipelines.definition.config import PipelineConfig, aws_default
from pipelines.definition.parameters import PARAMETERS, defaults, with_parameters
from pipelines.imports import SOURCE_ROOT as REPO_ROOT

ROLE = "arn:aws:iam::123456789012:role/lepton-pipeline"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/lepton:0123abcd"
PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)


class NetworkUsed(AssertionError):
    pass


@pytest.fixture(scope="module")
def no_network() -> Iterator[list[str]]:
    """Any socket connection, DNS lookup or botocore HTTP send fails the build (and is logged)."""
    attempts: list[str] = []

    def refuse(what: str) -> Any:
        def _refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{what}{args[1:] if what == 'connect' else args[:1]}")
            raise NetworkUsed(f"network use while building offline: {what} {args}")

        return _refuse

    import botocore.httpsession

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse("connect"))
        mp.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        mp.setattr(botocore.httpsession.URLLib3Session, "send", refuse("botocore-send"))
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        yield attempts


@pytest.fixture(scope="module")
def source_root(project_source: Path) -> Path:
    return project_source


@pytest.fixture(scope="module")
def cfg() -> PipelineConfig:
    return aws_default(
        ROLE, "lepton-test-bucket", "eu-west-1", epochs=4, lr_peak=0.002, image_uri=IMAGE
    )


@pytest.fixture(scope="module")
def built(
    no_network: list[str],
    source_root: Path,
    cfg: PipelineConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> BuiltDefinition:
    result = build_definition(
        cfg, source_root=source_root, staging_root=tmp_path_factory.mktemp("staging")
    )
    assert no_network == []
    return result


@pytest.fixture(scope="module")
def d(built: BuiltDefinition) -> dict[str, Any]:
    return built.parsed()


def all_steps(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every step by name, those in Condition branches (at any depth) included."""
    out = {}
    pending = list(d["Steps"])
    while pending:
        step = pending.pop(0)
        out[step["Name"]] = step
        if step["Type"] == "Condition":
            pending += step["Arguments"]["IfSteps"] + step["Arguments"]["ElseSteps"]
    return out


def referenced_steps(obj: Any) -> set[str]:
    text = json.dumps(obj)
    return set(re.findall(r'"Get": "Steps\.([A-Za-z0-9-]+)\.', text))


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


# ---- graph --------------------------------------------------------------------------------


def test_steps_and_types(d: dict[str, Any]) -> None:
    assert [(s["Name"], s["Type"]) for s in d["Steps"]] == [
        ("Prepare", "Processing"),
        ("Train", "Training"),
        ("Evaluate", "Processing"),
        ("QualityGate", "Condition"),
    ]
    gate = d["Steps"][3]["Arguments"]
    assert [(s["Name"], s["Type"]) for s in gate["IfSteps"]] == [
        ("Register", "RegisterModel"),
        ("Deploy", "Processing"),
        ("BatchRequested", "Condition"),
    ]
    assert [(s["Name"], s["Type"]) for s in gate["ElseSteps"]] == [("GateFailed", "Fail")]


def test_dependencies_are_property_references(d: dict[str, Any]) -> None:
    steps = all_steps(d)
    deps = {name: referenced_steps(s["Arguments"]) for name, s in steps.items()}
    assert deps == {
        "Prepare": set(),
        "Train": {"Prepare"},
        "Evaluate": {"Train", "Prepare"},
        "QualityGate": {"Evaluate", "Train", "Register"},  # its Arguments hold the nested steps
        "Register": {"Train", "Evaluate"},
        "Deploy": {"Register"},
        "BatchRequested": {"Train", "Register"},  # (its nested Batch step's references)
        "Batch": {"Train", "Register"},
        "GateFailed": {"Evaluate"},
    }
    assert referenced_steps(steps["QualityGate"]["Arguments"]["Conditions"]) == {"Evaluate"}


def test_parameters_and_defaults(d: dict[str, Any], cfg: PipelineConfig) -> None:
    params = {p["Name"]: p for p in d["Parameters"]}
    assert tuple(params) == PARAMETER_NAMES
    assert {k: p["DefaultValue"] for k, p in params.items()} == defaults(cfg)
    types = {k: p["Type"] for k, p in params.items()}
    assert types["Epochs"] == types["ProcessesPerNode"] == "Integer"
    assert types["LearningRate"] == types["MinimumChampionAccuracy"] == "Float"
    assert params["ModelApprovalStatus"]["EnumValues"] == [
        "Approved",
        "PendingManualApproval",
        "Rejected",
    ]


def test_config_round_trips_through_the_definition(d: dict[str, Any], cfg: PipelineConfig) -> None:
    values = {p["Name"]: p["DefaultValue"] for p in d["Parameters"]}
    assert with_parameters(cfg, values) == cfg
    assert (
        with_parameters(
            replace(
                PipelineConfig(),
                **{
                    k: getattr(cfg, k)
                    for k in (
                        "role_arn",
                        "image_uri",
                        "bucket",
                        "region",
                        "use_spot",
                        "champion_tolerance",
                        "dataset_name",
                        "image_size",
                        "channels",
                        "split_fractions",
                    )
                },
            ),
            values,
        )
        == cfg
    )
    assert PipelineConfig.from_args(cfg.to_args()) == cfg


# ---- steps --------------------------------------------------------------------------------


def test_prepare(d: dict[str, Any], built: BuiltDefinition, cfg: PipelineConfig) -> None:
    step = all_steps(d)["Prepare"]
    a = step["Arguments"]
    assert a["AppSpecification"]["ContainerEntrypoint"] == ["python3", "-m", n.PREPARE_MODULE]
    assert a["Environment"]["PYTHONPATH"] == n.CODE_DIR  # the code bundle is importable
    args = a["AppSpecification"]["ContainerArguments"]
    assert args[:4] == ["--input", n.RAW_DIR, "--output", n.DATASET_OUT_DIR]
    from pipelines.prepare.config import PrepareConfig
    from training.serialize import from_args

    prep = from_args(PrepareConfig, args)
    assert (prep.image_size, prep.channels, prep.dataset) == (
        cfg.image_size,
        cfg.channels,
        cfg.dataset_name,
    )
    inputs = {i["InputName"]: i["S3Input"] for i in a["ProcessingInputs"]}
    assert inputs["raw"]["S3Uri"] == {"Get": "Parameters.InputDataUri"}
    assert inputs["raw"]["LocalPath"] == n.RAW_DIR
    assert inputs["code"]["LocalPath"] == n.CODE_DIR
    assert inputs["code"]["S3Uri"] in built.bundle.uris()
    (out,) = a["ProcessingOutputConfig"]["Outputs"]
    assert out["OutputName"] == "dataset" and out["S3Output"]["LocalPath"] == n.DATASET_OUT_DIR
    assert step["CacheConfig"] == {"Enabled": True, "ExpireAfter": cfg.cache_expire}
    assert a["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == {
        "Get": "Parameters.ProcessingInstanceCount"
    }
    assert a["RoleArn"] == ROLE
    # Prepare's arguments are its cache key on SageMaker: nothing in them may differ per run
    assert "Execution." not in json.dumps(
        {k: v for k, v in a.items() if k != "ProcessingOutputConfig"}
    )
    assert inputs["raw"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert args[args.index("--exchange") + 1] == f"{cfg.s3_root}/exchange/Prepare"


def test_train(d: dict[str, Any], built: BuiltDefinition, cfg: PipelineConfig) -> None:
    step = all_steps(d)["Train"]
    a = step["Arguments"]
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in a["InputDataConfig"]
    }
    assert channels["dataset"] == {
        "Get": "Steps.Prepare.ProcessingOutputConfig.Outputs['dataset'].S3Output.S3Uri"
    }
    assert channels["code"] in built.bundle.uris()
    assert channels["sm_drivers"] in built.bundle.uris()
    hps = a["HyperParameters"]
    from training.config import TrainConfig, from_hyperparameters, to_hyperparameters

    assert set(hps) == set(to_hyperparameters(TrainConfig()))  # the whole training config
    plain = {k: v for k, v in hps.items() if isinstance(v, str)}
    assert from_hyperparameters(plain).arch == "small_cnn"
    assert hps["epochs"] == {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.Epochs"}]}}
    assert hps["per_device_batch_size"]["Std:Join"]["Values"] == [
        {"Get": "Parameters.PerDeviceBatchSize"}
    ]
    assert hps["lr_peak"]["Std:Join"]["Values"] == [{"Get": "Parameters.LearningRate"}]
    env = a["Environment"]
    assert env[n.ENV_NPROC_PER_NODE]["Std:Join"]["Values"] == [
        {"Get": "Parameters.ProcessesPerNode"}
    ]
    assert env[n.ENV_ENTRY_SCRIPT] == cfg.train_entry_script
    assert a["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    assert a["ResourceConfig"]["InstanceCount"] == {"Get": "Parameters.TrainingInstanceCount"}
    assert a["EnableManagedSpotTraining"] is True
    assert a["StoppingCondition"] == {
        "MaxRuntimeInSeconds": cfg.max_run_s,
        "MaxWaitTimeInSeconds": cfg.max_wait_s,
    }
    ckpt = a["CheckpointConfig"]
    assert ckpt["LocalPath"] == n.CHECKPOINT_DIR
    assert "Execution.PipelineExecutionId" not in json.dumps(ckpt)  # part of Train's cache key
    assert a["OutputDataConfig"]["S3OutputPath"] == f"{cfg.s3_root}/models"
    assert a["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert step["CacheConfig"]["Enabled"] is True and step["RetryPolicies"]


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


def test_evaluate_and_property_file(d: dict[str, Any]) -> None:
    step = all_steps(d)["Evaluate"]
    a = step["Arguments"]
    assert a["AppSpecification"]["ContainerEntrypoint"] == ["python3", "-m", n.EVALUATE_MODULE]
    assert a["AppSpecification"]["ContainerArguments"] == [
        "--model",
        n.MODEL_IN_DIR,
        "--dataset",
        n.DATASET_IN_DIR,
        "--output",
        n.EVALUATION_OUT_DIR,
    ]
    inputs = {i["InputName"]: i["S3Input"] for i in a["ProcessingInputs"]}
    assert inputs["model"]["S3Uri"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    assert inputs["dataset"]["S3Uri"] == {
        "Get": "Steps.Prepare.ProcessingOutputConfig.Outputs['dataset'].S3Output.S3Uri"
    }
    assert step["PropertyFiles"] == [
        {
            "PropertyFileName": "EvaluationReport",
            "OutputName": "evaluation",
            "FilePath": "evaluation.json",
        }
    ]
    assert a["ProcessingOutputConfig"]["Outputs"][0]["OutputName"] == "evaluation"
    assert step["CacheConfig"]["Enabled"] is True


def test_gate_register_deploy_fail(d: dict[str, Any]) -> None:
    steps = all_steps(d)
    acc = {
        "Std:JsonGet": {
            "PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"},
            "Path": "multiclass_classification_metrics.accuracy.value",
        }
    }
    assert steps["QualityGate"]["Arguments"]["Conditions"] == [
        {
            "Type": "GreaterThanOrEqualTo",
            "LeftValue": acc,
            "RightValue": {"Get": "Parameters.AccuracyThreshold"},
        },
        {
            "Type": "GreaterThanOrEqualTo",
            "LeftValue": acc,
            "RightValue": {"Get": "Parameters.MinimumChampionAccuracy"},
        },
    ]
    reg = steps["Register"]["Arguments"]
    assert reg["ModelPackageGroupName"] == {"Get": "Parameters.ModelPackageGroupName"}
    assert reg["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    (container,) = reg["InferenceSpecification"]["Containers"]
    assert container["ModelDataUrl"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    assert container["Image"] == IMAGE  # the project image's `serve` (bring your own container)
    # no code download at endpoint start: the model artifact carries its serving code
    assert not container.get("Environment", {}).get("SAGEMAKER_SUBMIT_DIRECTORY")
    stats = reg["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]["Std:Join"]["Values"]
    assert stats == [
        {"Get": "Steps.Evaluate.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"},
        "evaluation.json",
    ]
    deploy = steps["Deploy"]["Arguments"]["AppSpecification"]
    assert deploy["ContainerEntrypoint"] == ["python3", "-m", n.DEPLOY_MODULE]
    args = deploy["ContainerArguments"]
    assert args[args.index("--model-package-arn") + 1] == {"Get": "Steps.Register.ModelPackageArn"}
    message = steps["GateFailed"]["Arguments"]["ErrorMessage"]["Std:Join"]["Values"]
    assert acc in message and {"Get": "Parameters.AccuracyThreshold"} in message


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


# ---- the parameter table: every derived form agrees with the one declaration --------------


def test_every_parameter_is_read_by_its_consumer_and_typed_as_declared(
    d: dict[str, Any], cfg: PipelineConfig
) -> None:
    declared = {p["Name"]: p for p in d["Parameters"]}
    steps = all_steps(d)
    assert list(declared) == [p.name for p in PARAMETERS]
    for p in PARAMETERS:
        assert declared[p.name]["Type"] == p.sdk_type
        assert declared[p.name]["DefaultValue"] == getattr(cfg, p.field)
        readers = {
            name
            for name, step in steps.items()
            if f'"Parameters.{p.name}"' in json.dumps(step.get("Arguments", {}))
        }
        assert p.consumer in readers, (p.name, readers)
        if p.hyperparameter:
            hps = steps["Train"]["Arguments"]["HyperParameters"]
            assert {"Get": f"Parameters.{p.name}"} in hps[p.hyperparameter]["Std:Join"]["Values"]
        if p.choices:
            assert declared[p.name]["EnumValues"] == list(p.choices)


def test_cli_flags_come_from_the_table() -> None:
    from pipelines.cli import build_parser
    from pipelines.cli.pipeline import requested_parameters

    argv = []
    for p in PARAMETERS:
        argv += [p.flag, str(getattr(PipelineConfig(), p.field))]
    args = build_parser().parse_args(["pipeline", "run", *argv, "--data", "s3://b/raw/x"])
    given = requested_parameters(args)
    assert set(given) == {p.name for p in PARAMETERS}
    assert given["InputDataUri"] == "s3://b/raw/x"  # the alias and the flag are one parameter
    args = build_parser().parse_args(["pipeline", "run", "--epochs", "3", "--param", "Epochs=4"])
    with pytest.raises(ValueError, match="--epochs and --param Epochs"):
        requested_parameters(args)


def test_parameter_values_are_validated() -> None:
    from pipelines.definition.parameters import validate

    assert validate({"Epochs": "3", "LearningRate": "0.01"}) == {"Epochs": 3, "LearningRate": 0.01}
    for bad, match in (
        ({"Epoch": "3"}, "unknown pipeline parameter"),
        ({"Epochs": "three"}, "Epochs='three': expected int"),
        ({"Epochs": "٣"}, "expected int"),  # int() would take a non-ASCII digit
        ({"ModelApprovalStatus": "Maybe"}, "one of"),
    ):
        with pytest.raises(ValueError, match=match):
            validate(bad)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        validate({"Epochs": "0"}, PipelineConfig())


def test_a_hyperparameter_given_twice_names_both() -> None:
    with pytest.raises(ValueError, match="given twice.*Epochs.*epochs=5"):
        PipelineConfig(extra_hyperparameters=(("epochs", "5"),))
    with pytest.raises(ValueError, match="LearningRate"):
        PipelineConfig.from_args(["--extra-hyperparameters", "lr-peak=0.1"])


def test_the_readme_parameter_table_is_the_derived_one() -> None:
    from pipelines.definition.parameters import markdown_table

    readme = (REPO_ROOT / "README.md").read_text()
    assert markdown_table() in readme, "run `lepton pipeline parameters --markdown` into README"


def test_an_aws_definition_needs_an_image(source_root: Path, tmp_path: Path) -> None:
    from pipelines.definition.build import NoImageError

    with pytest.raises(NoImageError, match="lepton image build.*--stock-images"):
        build_definition(aws_default(ROLE, "b", "eu-west-1"), source_root, tmp_path)


def test_every_container_runs_the_project_image(d: dict[str, Any]) -> None:
    from pipelines.aws.image_lock import ENTRY_MODULES

    for name, step in all_steps(d).items():
        a = step.get("Arguments", {})
        if step["Type"] == "Processing":
            assert a["AppSpecification"]["ImageUri"] == IMAGE, name
            assert a["AppSpecification"]["ContainerEntrypoint"][:2] == ["python3", "-m"], name
            # the image's requirements are derived from this module's imports
            assert a["AppSpecification"]["ContainerEntrypoint"][2] in ENTRY_MODULES, name
        elif step["Type"] == "Training":
            assert a["AlgorithmSpecification"]["TrainingImage"] == IMAGE
        elif step["Type"] == "RegisterModel":
            assert a["InferenceSpecification"]["Containers"][0]["Image"] == IMAGE


def test_batch_is_an_optional_step_after_register(d: dict[str, Any]) -> None:
    from pipelines.runner.engine import flatten_steps
    from pipelines.runner.expressions import Context, evaluate_condition

    specs = flatten_steps(d)
    requested = specs[n.BATCH_REQUESTED]
    assert requested.branch == (n.GATE, True)  # only after the gate passed
    batch = specs[n.BATCH]
    assert batch.branch == (n.BATCH_REQUESTED, False)
    assert {n.REGISTER, n.TRAIN} <= batch.depends_on  # the registered version's artifact
    (condition,) = requested.body["Arguments"]["Conditions"]

    def outcome(value: str) -> bool:
        return evaluate_condition(condition, Context({"BatchInputUri": value}, {}, {}))[0]

    assert outcome("") is True and outcome("s3://in/") is False  # True -> no Batch step
    args = batch.body["Arguments"]
    assert args["AppSpecification"]["ContainerEntrypoint"] == ["python3", "-m", n.BATCH_MODULE]
    assert args["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.c5.2xlarge"
    assert [i["InputName"] for i in args["ProcessingInputs"]] == [n.CODE_INPUT, "model"]
    assert "ProcessingOutputConfig" not in args  # it writes its results to S3 itself


def test_batch_job_is_the_definitions_batch_step_with_its_values(d: dict[str, Any]) -> None:
    from pipelines.batch.job import job_arguments, results_uri

    args = job_arguments(
        d,
        input_uri="s3://in/images/",
        output_uri="s3://out/results/",
        model_data_url="s3://models/abc/model.tar.gz",
        model_version="arn:aws:sagemaker:eu-west-1:123456789012:model-package/g/3",
        job_id="lepton-batch-1",
        options={"top_k": 5, "workers": None},
    )
    assert "Get" not in json.dumps(args) and "Std:" not in json.dumps(args)  # all resolved
    argv = args["AppSpecification"]["ContainerArguments"]
    assert "--input=s3://in/images/" in argv and "--output=s3://out/results/" in argv
    assert argv[-1] == "--top_k=5" and not any("workers" in a for a in argv)
    model = next(i for i in args["ProcessingInputs"] if i["InputName"] == "model")
    assert model["S3Input"]["S3Uri"] == "s3://models/abc/model.tar.gz"
    assert args["RoleArn"] == ROLE and args["AppSpecification"]["ImageUri"] == IMAGE
    assert results_uri(argv) == "s3://out/results/"
    # No output given: the execution's own prefix.
    args = job_arguments(
        d,
        input_uri="s3://in/",
        output_uri="",
        model_data_url="s3://m/model.tar.gz",
        model_version="v",
        job_id="exec-7",
    )
    assert results_uri(args["AppSpecification"]["ContainerArguments"]) == (
        "s3://lepton-test-bucket/pipeline/executions/exec-7/Batch/predictions"
    )


def test_only_the_steps_that_track_get_the_tracking_uri(
    source_root: Path, cfg: PipelineConfig, tmp_path: Path
) -> None:
    """...which is also what the local runner waits for MLflow before (uses_tracking)."""
    from pipelines.runner.engine import flatten_steps, uses_tracking

    uri = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/lepton"
    built = build_definition(
        replace(cfg, tracking_uri=uri), source_root=source_root, staging_root=tmp_path
    )
    steps = all_steps(built.parsed())
    jobs = {n for n, s in steps.items() if s["Type"] in ("Processing", "Training")}
    env = {n: steps[n]["Arguments"].get("Environment", {}) for n in jobs}
    assert {n for n in jobs if env[n].get("MLFLOW_TRACKING_URI") == uri} == jobs - {"Prepare"}
    specs = flatten_steps(built.parsed())
    tracking = {name for name, spec in specs.items() if uses_tracking(spec)}
    assert tracking == set(steps) - {"Prepare", "QualityGate", "BatchRequested", "GateFailed"}
