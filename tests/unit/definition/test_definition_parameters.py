"""The pipeline definition's parameters: declared once (pipelines.definition.parameters), and
every derived form agrees with that declaration: the definition's Parameters and their
consumers, the config round trip, the CLI flags, validation and the README table.
Fixtures: conftest.py."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from pipelines.definition.config import PipelineConfig
from pipelines.definition.parameters import PARAMETERS, defaults, with_parameters
from pipelines.imports import SOURCE_ROOT as REPO_ROOT
from tests.unit.definition.helpers import PARAMETER_NAMES, all_steps


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
