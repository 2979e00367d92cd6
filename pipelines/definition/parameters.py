"""The pipeline parameters, derived from the `parameter(...)` fields of `PipelineConfig`.

A `PipelineConfig` field declared with `parameter()` is the one declaration of a parameter.
From it come: the SDK parameter objects in the definition (`sdk_parameters`), the CLI flags of
`lepton pipeline run|start` (`add_parameter_flags` / `parameters_from_flags`), the training
hyperparameters a parameter sets (`hyperparameter_parameters`), validation of the values given
to an execution (`validate`), and the README's parameter table (`markdown_table`).
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from pipelines.definition.config import PipelineConfig

_SDK_TYPES = {str: "String", int: "Integer", float: "Float"}


@dataclass(frozen=True)
class Parameter:
    name: str  # the pipeline parameter's name, e.g. "Epochs"
    field: str  # the PipelineConfig field it sets, e.g. "epochs"
    type: type  # str, int or float
    default: Any  # the field's default (a config's value is the definition's default)
    help: str
    consumer: str  # the step whose arguments read it
    hyperparameter: str | None  # the training config field it sets (Train only)
    choices: tuple[str, ...]
    aliases: tuple[str, ...]  # extra CLI spellings

    @property
    def sdk_type(self) -> str:
        return _SDK_TYPES[self.type]

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    def parse(self, raw: Any) -> Any:
        """The value of a raw (string) override, or ValueError naming the parameter."""
        try:
            if isinstance(raw, bool) or (isinstance(raw, str) and not raw.isascii()):
                raise ValueError  # int() takes non-ASCII digits ("٣" -> 3); SageMaker does not
            value = self.type(raw)
            if self.type is int and isinstance(raw, float) and raw != value:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(
                f"parameter {self.name}={raw!r}: expected {self.type.__name__}"
            ) from None
        if self.choices and value not in self.choices:
            raise ValueError(f"parameter {self.name}={raw!r}: one of {', '.join(self.choices)}")
        return value


def _derive() -> tuple[Parameter, ...]:
    hints = typing.get_type_hints(PipelineConfig)
    out = []
    for f in fields(PipelineConfig):
        meta = f.metadata
        if "parameter" not in meta:
            continue
        if hints[f.name] not in _SDK_TYPES:
            raise TypeError(f"parameter field {f.name} must be str, int or float")
        out.append(
            Parameter(
                name=meta["parameter"],
                field=f.name,
                type=hints[f.name],
                default=f.default,
                help=meta["help"],
                consumer=meta["consumer"],
                hyperparameter=meta.get("hyperparameter"),
                choices=tuple(meta.get("choices") or ()),
                aliases=tuple(meta.get("aliases") or ()),
            )
        )
    return tuple(out)


PARAMETERS: tuple[Parameter, ...] = _derive()
BY_NAME: dict[str, Parameter] = {p.name: p for p in PARAMETERS}
BY_FIELD: dict[str, Parameter] = {p.field: p for p in PARAMETERS}


def defaults(cfg: PipelineConfig) -> dict[str, Any]:
    """Each parameter's default in the definition built from `cfg` (name -> value)."""
    return {p.name: getattr(cfg, p.field) for p in PARAMETERS}


def with_parameters(cfg: PipelineConfig, values: Mapping[str, Any]) -> PipelineConfig:
    """`cfg` with the fields behind the given parameters replaced (validated by the config)."""
    from dataclasses import replace

    return replace(cfg, **{BY_NAME[k].field: v for k, v in validate(values).items()})


def validate(values: Mapping[str, Any], cfg: PipelineConfig | None = None) -> dict[str, Any]:
    """Typed values of the given parameter overrides; unknown names and bad values raise.

    With `cfg`, the config's own rules also run on the values (e.g. Epochs >= 1).
    """
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise ValueError(
            f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}"
        )
    typed = {name: BY_NAME[name].parse(raw) for name, raw in values.items()}
    if cfg is not None:
        from dataclasses import replace

        try:
            replace(cfg, **{BY_NAME[k].field: v for k, v in typed.items()})
        except ValueError as exc:
            raise ValueError(f"invalid pipeline parameters {typed}: {exc}") from None
    return typed


def hyperparameter_parameters() -> dict[str, Parameter]:
    """Training config field -> the parameter that sets it."""
    return {p.hyperparameter: p for p in PARAMETERS if p.hyperparameter}


def sdk_parameters(cfg: PipelineConfig) -> dict[str, Any]:
    """One SDK parameter object per parameter, keyed by config field, defaults from `cfg`."""
    from sagemaker.core.workflow.parameters import (
        ParameterFloat,
        ParameterInteger,
        ParameterString,
    )

    kinds = {str: ParameterString, int: ParameterInteger, float: ParameterFloat}
    out: dict[str, Any] = {}
    for p in PARAMETERS:
        value = getattr(cfg, p.field)
        if p.choices:
            out[p.field] = ParameterString(p.name, value, list(p.choices))
        else:
            out[p.field] = kinds[p.type](p.name, value)
    return out


# ---- CLI ---------------------------------------------------------------------------------


def add_parameter_flags(parser: argparse.ArgumentParser, cfg: PipelineConfig) -> None:
    """One `--flag` per parameter (plus its aliases); unset flags stay None."""
    group = parser.add_argument_group("pipeline parameters")
    for p in PARAMETERS:
        group.add_argument(
            p.flag,
            *("--" + a for a in p.aliases),
            dest=f"param_{p.field}",
            metavar=p.type.__name__.upper(),
            default=None,
            help=f"{p.name}: {p.help} (default {getattr(cfg, p.field)!r})",
        )


def parameters_from_flags(ns: argparse.Namespace) -> dict[str, str]:
    """The parameters given as flags (name -> raw value)."""
    out = {}
    for p in PARAMETERS:
        value = getattr(ns, f"param_{p.field}", None)
        if value is not None:
            out[p.name] = value
    return out


def markdown_table() -> str:
    """The README's parameter table, with the local run's and the AWS setup's defaults (a test
    checks that the README holds exactly this; `lepton pipeline parameters --markdown`)."""
    from pipelines.definition.config import aws_from_settings, local_default
    from pipelines.settings import Settings

    local, aws = local_default(Settings()), aws_from_settings(Settings(mode="aws"))
    lines = [
        "| parameter | type | local default | AWS default | flag | step | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in PARAMETERS:
        flags = " ".join(f"`{f}`" for f in (p.flag, *("--" + a for a in p.aliases)))
        lines.append(
            f"| `{p.name}` | {p.sdk_type} | `{getattr(local, p.field)}` | "
            f"`{getattr(aws, p.field)}` | {flags} | {p.consumer} | {p.help} |"
        )
    return "\n".join(lines) + "\n"
