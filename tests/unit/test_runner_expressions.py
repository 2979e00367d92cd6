"""The local runner's reading of a pipeline definition: references, joins, conditions, order."""

from __future__ import annotations

import pytest

from pipelines.runner.engine import flatten_steps, parameter_values, topological_order
from pipelines.runner.expressions import (
    Context,
    ExpressionError,
    evaluate_condition,
    references,
    resolve,
)

PROPS = {
    "Prepare": {
        "ProcessingOutputConfig": {
            "Outputs": [
                {"OutputName": "report", "S3Output": {"S3Uri": "s3://b/report"}},
                {"OutputName": "dataset", "S3Output": {"S3Uri": "s3://b/dataset"}},
            ]
        }
    },
    "Train": {"ModelArtifacts": {"S3ModelArtifacts": "s3://b/model.tar.gz"}},
}
EVAL = {"multiclass_classification_metrics": {"accuracy": {"value": 0.97}}}


def ctx(**params: object) -> Context:
    return Context(
        parameters={"AccuracyThreshold": 0.95, "Epochs": 3, **params},
        execution={"PipelineExecutionId": "exec-1"},
        step_properties=PROPS,
        property_files={"Evaluate": {"EvaluationReport": EVAL}},
    )


def test_get_parameters_steps_and_execution() -> None:
    c = ctx()
    assert resolve({"Get": "Parameters.Epochs"}, c) == 3
    assert resolve({"Get": "Execution.PipelineExecutionId"}, c) == "exec-1"
    got = resolve(
        {"Get": "Steps.Prepare.ProcessingOutputConfig.Outputs['dataset'].S3Output.S3Uri"}, c
    )
    assert got == "s3://b/dataset"
    assert (
        resolve({"Get": "Steps.Prepare.ProcessingOutputConfig.Outputs[0].OutputName"}, c)
        == "report"
    )


def test_join_and_json_get_nested_in_arguments() -> None:
    value = {
        "Uri": {
            "Std:Join": {
                "On": "/",
                "Values": ["s3://b", {"Get": "Execution.PipelineExecutionId"}, "x"],
            }
        },
        "Acc": {
            "Std:JsonGet": {
                "PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"},
                "Path": "multiclass_classification_metrics.accuracy.value",
            }
        },
        "List": [1, {"Get": "Parameters.Epochs"}],
    }
    assert resolve(value, ctx()) == {"Uri": "s3://b/exec-1/x", "Acc": 0.97, "List": [1, 3]}


def test_unknown_references_fail_clearly() -> None:
    with pytest.raises(ExpressionError, match="unknown parameter 'Nope'"):
        resolve({"Get": "Parameters.Nope"}, ctx())
    with pytest.raises(ExpressionError, match="has not run"):
        resolve({"Get": "Steps.Deploy.Anything"}, ctx())
    with pytest.raises(ExpressionError, match="no element named 'missing'"):
        resolve({"Get": "Steps.Prepare.ProcessingOutputConfig.Outputs['missing']"}, ctx())


def test_conditions_give_outcome_and_reason() -> None:
    cond = {
        "Type": "GreaterThanOrEqualTo",
        "LeftValue": {
            "Std:JsonGet": {
                "PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"},
                "Path": "multiclass_classification_metrics.accuracy.value",
            }
        },
        "RightValue": {"Get": "Parameters.AccuracyThreshold"},
    }
    ok, reason = evaluate_condition(cond, ctx())
    assert ok and reason == "0.9700 >= 0.9500: yes"
    ok, reason = evaluate_condition(cond, ctx(AccuracyThreshold=1.01))
    assert not ok and "no" in reason
    ok, _ = evaluate_condition({"Type": "Not", "Expression": cond}, ctx(AccuracyThreshold=1.01))
    assert ok


def _definition() -> dict:
    gate = {
        "Name": "Gate",
        "Type": "Condition",
        "Arguments": {
            "Conditions": [
                {
                    "Type": "GreaterThanOrEqualTo",
                    "LeftValue": {"Get": "Steps.Train.FinalMetricDataList[0].Value"},
                    "RightValue": {"Get": "Parameters.AccuracyThreshold"},
                }
            ],
            "IfSteps": [{"Name": "Register", "Type": "RegisterModel", "Arguments": {}}],
            "ElseSteps": [{"Name": "Fail", "Type": "Fail", "Arguments": {"ErrorMessage": "low"}}],
        },
    }
    return {
        "Parameters": [
            {"Name": "AccuracyThreshold", "Type": "Float", "DefaultValue": 0.9},
            {"Name": "Epochs", "Type": "Integer", "DefaultValue": 2},
        ],
        "Steps": [
            gate,
            {"Name": "Deploy", "Type": "Processing", "DependsOn": ["Register"], "Arguments": {}},
            {
                "Name": "Train",
                "Type": "Training",
                "Arguments": {
                    "In": {
                        "Get": "Steps.Prepare.ProcessingOutputConfig.Outputs['dataset'].S3Output.S3Uri"
                    }
                },
            },
            {"Name": "Prepare", "Type": "Processing", "Arguments": {}},
        ],
    }


def test_flatten_and_order_follow_references_and_branches() -> None:
    specs = flatten_steps(_definition())
    assert set(specs) == {"Gate", "Register", "Fail", "Deploy", "Train", "Prepare"}
    assert specs["Register"].branch == ("Gate", True)
    assert specs["Fail"].branch == ("Gate", False)
    assert specs["Gate"].depends_on == {"Train"}
    order = topological_order(specs)
    for before, after in [
        ("Prepare", "Train"),
        ("Train", "Gate"),
        ("Gate", "Register"),
        ("Register", "Deploy"),
        ("Gate", "Fail"),
    ]:
        assert order.index(before) < order.index(after)
    assert references({"x": [{"Get": "Steps.A.B"}, {"Get": "Parameters.C"}]}) == {"A"}


def test_cycle_is_reported() -> None:
    definition = {
        "Steps": [
            {"Name": "A", "Type": "Processing", "DependsOn": ["B"], "Arguments": {}},
            {"Name": "B", "Type": "Processing", "DependsOn": ["A"], "Arguments": {}},
        ]
    }
    with pytest.raises(ValueError, match="cycle"):
        topological_order(flatten_steps(definition))


def test_parameters_are_typed_and_checked() -> None:
    values = parameter_values(_definition(), {"Epochs": "5"})
    assert values == {"AccuracyThreshold": 0.9, "Epochs": 5}
    with pytest.raises(ValueError, match="unknown pipeline parameter"):
        parameter_values(_definition(), {"Epoch": 5})
