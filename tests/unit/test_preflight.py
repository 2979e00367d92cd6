"""Preflight, offline part: the real definition passes on every step type it uses, and seeded
errors are caught, each naming its step and JSON path. No AWS call (the account checks are in
tests/integration/test_preflight_aws.py)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipelines.aws.preflight import (
    definition_checks,
    offline_reason,
    trusts,
)
from pipelines.aws.preflight_definition import DefinitionReport, Problem, check_definition
from pipelines.aws.preflight_shapes import STEP_APIS
from pipelines.definition.build import build_definition
from pipelines.definition.config import aws_default
from pipelines.settings import Settings

ROLE = "arn:aws:iam::123456789012:role/lepton-pipeline"
REGION = "eu-west-1"
EXPECTED_APIS = {
    "Prepare": "CreateProcessingJob",
    "Train": "CreateTrainingJob",
    "Evaluate": "CreateProcessingJob",
    "QualityGate": "condition rules",
    "Register": "CreateModelPackage",
    "Deploy": "CreateProcessingJob",
    "BatchRequested": "condition rules",
    "Batch": "CreateProcessingJob",
    "GateFailed": "error message",
}


@pytest.fixture(scope="module")
def d(project_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cfg = aws_default(
        ROLE,
        "lepton-test-bucket",
        REGION,
        image_uri=f"123456789012.dkr.ecr.{REGION}.amazonaws.com/l:1",
    )
    built = build_definition(cfg, project_source, tmp_path_factory.mktemp("staging"))
    return built.parsed()


def steps_of(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every step by name, branches of Condition steps included (independent of preflight)."""
    out: dict[str, dict[str, Any]] = {}

    def add(steps: list[dict[str, Any]]) -> None:
        for step in steps:
            out[step["Name"]] = step
            if step["Type"] == "Condition":
                add(step["Arguments"]["IfSteps"] + step["Arguments"]["ElseSteps"])

    add(d["Steps"])
    return out


def check(d: dict[str, Any]) -> DefinitionReport:
    return check_definition(d, region=REGION, pipeline_name="lepton", account="123456789012")


def seeded(
    d: dict[str, Any], change: Callable[[dict[str, Any], dict[str, Any]], None]
) -> list[str]:
    broken = copy.deepcopy(d)
    change(broken, steps_of(broken))
    return [str(p) for p in check(broken).problems]


# ---- the real definition --------------------------------------------------------------------


def test_real_definition_passes_and_every_step_type_is_checked(d: dict[str, Any]) -> None:
    report = check(d)
    assert report.problems == (), "\n".join(map(str, report.problems))
    in_definition = {s["Type"] for s in steps_of(d).values()}
    checked = {s.type for s in report.steps if s.against is not None}
    assert checked == in_definition  # a new step type cannot slip through unchecked
    assert {s.name: s.against for s in report.steps} == EXPECTED_APIS


def test_report_lines(d: dict[str, Any]) -> None:
    lines = [c.line() for c in definition_checks(check(d))]
    assert lines[0] == "parameters: ok"
    assert "step Train (Training, CreateTrainingJob): ok" in lines
    assert "step QualityGate (Condition, condition rules): ok" in lines
    assert len(lines) == 1 + len(EXPECTED_APIS)


def test_an_unknown_step_type_fails_and_is_not_counted_as_checked(d: dict[str, Any]) -> None:
    broken = copy.deepcopy(d)
    steps_of(broken)["Deploy"]["Type"] = "Lambda"
    report = check(broken)
    assert [str(p) for p in report.problems_of("Deploy")] == [
        "Deploy: Type: preflight has no rules for step type 'Lambda' (Processing, Training, "
        "RegisterModel, Model, Transform, Condition, Fail)"
    ]
    assert "Lambda" not in {s.type for s in report.steps if s.against}


# ---- seeded errors: each names the step and the JSON path ---------------------------------

DATASET_URI = "Steps.Prepare.ProcessingOutputConfig.Outputs['dataset'].S3Output.S3Uri"
S3_PATTERN = "does not match the pattern (https|s3)://([^/]+)/?(.*)"


def _input(step: dict[str, Any], i: int) -> dict[str, Any]:
    return step["Arguments"]["ProcessingInputs"][i]["S3Input"]


def _train_channel(s: dict[str, Any]) -> dict[str, Any]:
    return s["Train"]["Arguments"]["InputDataConfig"][0]["DataSource"]["S3DataSource"]


SEEDED: dict[str, tuple[Callable[[dict[str, Any], dict[str, Any]], None], list[str]]] = {
    "processing input without S3Uri": (
        lambda d, s: _input(s["Prepare"], 1).pop("S3Uri"),
        [
            "Prepare: ProcessingInputs[1].S3Input.S3Uri: missing: a required member "
            "(CreateProcessingJob)"
        ],
    ),
    "InstanceCount parameter with a string default": (
        lambda d, s: next(
            p for p in d["Parameters"] if p["Name"] == "ProcessingInstanceCount"
        ).update(DefaultValue="1"),
        [
            "Parameters: ProcessingInstanceCount: default '1' is str; the parameter's type "
            "Integer needs int",
            "Prepare: ProcessingResources.ClusterConfig.InstanceCount: '1' is str, expected int "
            "(CreateProcessingJob)",
        ],
    ),
    "reference to a step that does not exist": (
        lambda d, s: _train_channel(s).update(
            S3Uri={"Get": DATASET_URI.replace("Prepare", "Prep")}
        ),
        [
            "Train: InputDataConfig[0].DataSource.S3DataSource.S3Uri: "
            f"{DATASET_URI.replace('Prepare', 'Prep')}: no step named 'Prep' (steps: Prepare, "
            "Train, Evaluate, QualityGate, Register, Deploy, BatchRequested, Batch, GateFailed)"
        ],
    ),
    "reference to a property the API does not have": (
        lambda d, s: _input(s["Evaluate"], 1).update(
            S3Uri={"Get": "Steps.Train.ModelArtifacts.S3ModelArtifact"}
        ),
        [
            "Evaluate: ProcessingInputs[1].S3Input.S3Uri: Steps.Train.ModelArtifacts."
            "S3ModelArtifact: not a property of Train (DescribeTrainingJob: ModelArtifacts has "
            "no member 'S3ModelArtifact' (members: S3ModelArtifacts))"
        ],
    ),
    "reference to an output the step does not declare": (
        lambda d, s: _input(s["Evaluate"], 2).update(
            S3Uri={"Get": DATASET_URI.replace("'dataset'", "'datasets'")}
        ),
        [
            "Evaluate: ProcessingInputs[2].S3Input.S3Uri: "
            f"{DATASET_URI.replace('dataset', 'datasets', 1)}: not a property of Prepare "
            "(DescribeProcessingJob: no element named 'datasets'; the step declares ['dataset'])"
        ],
    ),
    "reference of the wrong kind for its field": (
        lambda d, s: s["Train"]["Arguments"]["CheckpointConfig"].update(
            S3Uri={"Get": "Steps.Prepare.ProcessingJobName"}
        ),
        [
            "Train: CheckpointConfig.S3Uri: 'pipelines-preflight0000-Prepare' "
            f"{S3_PATTERN} (CreateTrainingJob)"
        ],
    ),
    "unknown top-level key": (
        lambda d, s: s["Train"]["Arguments"].update(TrainingJobNam="x"),
        ["Train: TrainingJobNam: unknown member; valid members: TrainingJobName, HyperParameters"],
    ),
    "hyperparameter that is not a string": (
        lambda d, s: s["Train"]["Arguments"]["HyperParameters"].update(epochs=16),
        ["Train: HyperParameters.epochs: 16 is int, expected str (CreateTrainingJob)"],
    ),
    "instance type outside the API's enum": (
        lambda d, s: s["Train"]["Arguments"]["ResourceConfig"].update(InstanceType="ml.x9.huge"),
        ["Train: ResourceConfig.InstanceType: 'ml.x9.huge' is not one of the "],
    ),
    "value above the API's maximum": (
        lambda d, s: s["Train"]["Arguments"]["StoppingCondition"].update(
            MaxPendingTimeInSeconds=10**8
        ),
        [
            "Train: StoppingCondition.MaxPendingTimeInSeconds: value 100000000 is above the "
            "maximum 2419200 (CreateTrainingJob)"
        ],
    ),
    "value below the API's minimum": (
        lambda d, s: s["Train"]["Arguments"]["StoppingCondition"].update(MaxRuntimeInSeconds=0),
        [
            "Train: StoppingCondition.MaxRuntimeInSeconds: 0 is below the minimum 1 "
            "(CreateTrainingJob)"
        ],
    ),
    "S3 URI that is not one": (
        lambda d, s: s["Train"]["Arguments"]["OutputDataConfig"].update(S3OutputPath="bucket/x"),
        [f"Train: OutputDataConfig.S3OutputPath: 'bucket/x' {S3_PATTERN} (CreateTrainingJob)"],
    ),
    "approval status parameter outside its enum": (
        lambda d, s: next(p for p in d["Parameters"] if p["Name"] == "ModelApprovalStatus").update(
            DefaultValue="Approve"
        ),
        [
            "Parameters: ModelApprovalStatus: default 'Approve' is not in ['Approved', "
            "'PendingManualApproval', 'Rejected']",
            "Register: ModelApprovalStatus: 'Approve' is not one of Approved, Rejected, "
            "PendingManualApproval",
        ],
    ),
    "model metrics without a content type": (
        lambda d, s: s["Register"]["Arguments"]["ModelMetrics"]["ModelQuality"]["Statistics"].pop(
            "ContentType"
        ),
        [
            "Register: ModelMetrics.ModelQuality.Statistics.ContentType: missing: a required "
            "member (CreateModelPackage)"
        ],
    ),
    "unknown parameter": (
        lambda d, s: s["Deploy"]["Arguments"]["AppSpecification"]["ContainerArguments"].append(
            {"Get": "Parameters.Nope"}
        ),
        ["Deploy: AppSpecification.ContainerArguments[4]: unknown parameter 'Nope'"],
    ),
    "unknown execution variable": (
        lambda d, s: s["Prepare"]["Arguments"]["Environment"].update(
            RUN={"Get": "Execution.PipelineExecutionName"}
        ),
        ["Prepare: Environment.RUN: Execution.PipelineExecutionName: 'PipelineExecutionName' not "],
    ),
    "property file that is not declared": (
        lambda d, s: s["QualityGate"]["Arguments"]["Conditions"][0]["LeftValue"]["Std:JsonGet"][
            "PropertyFile"
        ].update(Get="Steps.Evaluate.PropertyFiles.Report"),
        [
            "QualityGate: Conditions[0].LeftValue: Steps.Evaluate.PropertyFiles.Report: step "
            "Evaluate declares no property file 'Report' (it declares ['EvaluationReport'])"
        ],
    ),
    "property file on an output the step does not have": (
        lambda d, s: s["Evaluate"]["PropertyFiles"][0].update(OutputName="eval"),
        [
            "Evaluate: PropertyFiles[0].OutputName: 'eval' is not an output of the step "
            "(outputs: ['evaluation'])"
        ],
    ),
    "unknown condition type": (
        lambda d, s: s["QualityGate"]["Arguments"]["Conditions"][1].update(Type="AtLeast"),
        ["QualityGate: Conditions[1].Type: 'AtLeast' is not a condition type (Equals, "],
    ),
    "condition without its right operand": (
        lambda d, s: s["QualityGate"]["Arguments"]["Conditions"][1].pop("RightValue"),
        [
            "QualityGate: Conditions[1].RightValue: missing: a GreaterThanOrEqualTo condition "
            "needs it"
        ],
    ),
    "condition comparing text with a number": (
        lambda d, s: s["QualityGate"]["Arguments"]["Conditions"][1].update(
            RightValue={"Get": "Parameters.ModelPackageGroupName"}
        ),
        ["QualityGate: Conditions[1]: cannot evaluate: '>=' not supported between "],
    ),
    "fail message that does not resolve": (
        lambda d, s: s["GateFailed"]["Arguments"]["ErrorMessage"]["Std:Join"]["Values"].append(
            {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"}
        ),
        [
            "GateFailed: ErrorMessage: Steps.Evaluate.PropertyFiles.EvaluationReport: a property "
            "file is read with Std:JsonGet"
        ],
    ),
    "DependsOn a step that does not exist": (
        lambda d, s: s["Deploy"].update(DependsOn=["Registr"]),
        ["Deploy: DependsOn[0]: no step named 'Registr'"],
    ),
}


@pytest.mark.parametrize("case", SEEDED)
def test_seeded_error_is_caught_with_step_and_path(d: dict[str, Any], case: str) -> None:
    change, expected = SEEDED[case]
    found = seeded(d, change)
    assert len(found) == len(expected), found
    for problem, prefix in zip(found, expected, strict=True):
        assert problem.startswith(prefix), (problem, prefix)


def test_problem_format() -> None:
    problem = Problem("Train", "HyperParameters.epochs", "16 is int, expected str")
    assert str(problem) == "Train: HyperParameters.epochs: 16 is int, expected str"
    lines = [c.line() for c in definition_checks(DefinitionReport((), (problem,)))]
    assert "definition: FAILED: HyperParameters.epochs: 16 is int, expected str" in lines


# ---- step types the definition does not use yet -----------------------------------------


def test_model_and_transform_steps_are_checked_against_their_apis(d: dict[str, Any]) -> None:
    artifacts = {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    model = {
        "Name": "CreateModel",
        "Type": "Model",
        "Arguments": {
            "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {"Image": "img", "ModelDataUrl": artifacts},
        },
    }
    transform = {
        "Name": "Transform",
        "Type": "Transform",
        "Arguments": {
            "ModelName": {"Get": "Steps.CreateModel.ModelName"},
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in"}}
            },
            "TransformOutput": {"S3OutputPath": {"Get": "Steps.CreateModel.ModelArn"}},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        },
    }
    extended = copy.deepcopy(d)
    extended["Steps"] += [model, transform]
    report = check(extended)
    assert {s.name: s.against for s in report.steps if s.name in ("CreateModel", "Transform")} == {
        "CreateModel": STEP_APIS["Model"].create,
        "Transform": STEP_APIS["Transform"].create,
    }
    # the model's ARN is no S3 URI: caught against TransformOutput's own pattern
    assert [str(p) for p in report.problems] == [
        "Transform: TransformOutput.S3OutputPath: 'arn:aws:sagemaker:eu-west-1:123456789012:model/"
        f"pipelines-preflight0000-CreateModel' {S3_PATTERN} (CreateTransformJob)"
    ]


# ---- offline mode, trust policies --------------------------------------------------------


def test_offline_reason_says_which() -> None:
    aws = Settings(mode="aws")
    assert offline_reason(aws, requested=True, has_credentials=lambda: True) == "--offline given"
    assert "LEPTON_MODE" in str(
        offline_reason(Settings(), requested=False, has_credentials=lambda: True)
    )
    assert "no AWS credentials" in str(
        offline_reason(aws, requested=False, has_credentials=lambda: False)
    )
    assert offline_reason(aws, requested=False, has_credentials=lambda: True) is None


def test_trust_policy() -> None:
    allow = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": ["lambda.amazonaws.com", "sagemaker.amazonaws.com"]},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    assert trusts(allow, "sagemaker.amazonaws.com")
    from urllib.parse import quote

    assert trusts(quote(json.dumps(allow)), "sagemaker.amazonaws.com")  # IAM's encoded form
    assert not trusts(allow, "events.amazonaws.com")
    denied = copy.deepcopy(allow)
    denied["Statement"][0]["Effect"] = "Deny"
    assert not trusts(denied, "sagemaker.amazonaws.com")
