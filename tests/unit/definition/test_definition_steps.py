"""The pipeline definition's step graph and each step's JSON: what the local runner and
SageMaker expect (types, property references, entry points, images, the optional Batch step,
the tracking URI). Fixtures: conftest.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines.definition import names as n
from pipelines.definition.build import BuiltDefinition, build_definition
from pipelines.definition.config import PipelineConfig
from tests.unit.definition.helpers import IMAGE, ROLE, all_steps, referenced_steps

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
