"""Offline preflight of a pipeline definition: does every step's request validate against the
SageMaker API that runs it, and does every expression resolve?

Each step (those nested in Condition branches included) is checked by its type: a job step's
`Arguments` are the request of a SageMaker API (`preflight_shapes.STEP_APIS`), validated with
botocore's service model once its expressions are filled in (`preflight_expressions`) and the
member SageMaker adds itself (the job's name) is set; a Condition's conditions must be well
formed and evaluable; a Fail step's message must resolve. The parameters' defaults must have
their declared types. Every problem names the step (or `Parameters`) and the JSON path.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.aws.preflight_expressions import Filler, job_name, join_path
from pipelines.aws.preflight_shapes import STEP_APIS, StepApi, input_shape, validate
from pipelines.runner.expressions import ExpressionError, evaluate_condition

CONTROL_STEPS = {"Condition": "condition rules", "Fail": "error message"}
# The pipeline-definition schema of conditions (it is not part of the botocore model).
CONDITION_OPERANDS: dict[str, tuple[str, ...]] = {
    **{
        kind: ("LeftValue", "RightValue")
        for kind in (
            "Equals",
            "GreaterThan",
            "GreaterThanOrEqualTo",
            "LessThan",
            "LessThanOrEqualTo",
        )
    },
    "In": ("QueryValue", "Values"),
    "Not": ("Expression",),
    "Or": ("Conditions",),
}
_PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "String": (str,),
    "Integer": (int,),
    "Float": (int, float),
    "Boolean": (bool,),
}
_FALLBACK_DEFAULTS = {"String": "placeholder", "Integer": 1, "Float": 0.5, "Boolean": False}


@dataclass(frozen=True)
class Problem:
    where: str  # a step name, or "Parameters" / "Steps"
    path: str  # JSON path inside the step's Arguments (botocore notation), or the parameter
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True)
class CheckedStep:
    name: str
    type: str
    against: str | None  # the API (or rule set) it was checked against; None: not checked


@dataclass(frozen=True)
class DefinitionReport:
    steps: tuple[CheckedStep, ...]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def problems_of(self, where: str) -> list[Problem]:
        return [p for p in self.problems if p.where == where]


def all_steps(steps: list[Any]) -> Iterator[dict[str, Any]]:
    """Every step, those inside Condition branches included (depth first, in order)."""
    for step in steps:
        if not isinstance(step, dict):
            continue
        yield step
        args = step.get("Arguments")
        if step.get("Type") == "Condition" and isinstance(args, dict):
            for branch in ("IfSteps", "ElseSteps"):
                if isinstance(args.get(branch), list):
                    yield from all_steps(args[branch])


@dataclass
class _Checker:
    filler: Filler
    problems: list[Problem] = field(default_factory=list)

    def problem(self, where: str, path: str, message: str) -> None:
        self.problems.append(Problem(where, path, message))

    def fill(self, value: Any, where: str, path: str) -> tuple[Any, list[str]]:
        """The filled value, and the paths that did not resolve (each one a problem)."""
        filled, errors = self.filler.fill(value, path)
        for error_path, message in errors:
            self.problem(where, error_path, message)
        return filled, [p for p, _ in errors]

    def arguments(self, step: dict[str, Any]) -> dict[str, Any] | None:
        args = step.get("Arguments")
        if not isinstance(args, dict):
            self.problem(step["Name"], "Arguments", "missing or not an object")
            return None
        return args

    def request(self, step: dict[str, Any], api: StepApi) -> None:
        name, args = str(step["Name"]), self.arguments(step)
        if args is None:
            return
        filled, failed = self.fill(args, name, "")
        if api.name_member:
            filled.setdefault(api.name_member, job_name(name))
        for path, message in validate(filled, input_shape(api.create)):
            if not any(path == f or path.startswith((f + ".", f + "[")) for f in failed):
                self.problem(name, path, f"{message} ({api.create})")
        self.property_files(step)

    def property_files(self, step: dict[str, Any]) -> None:
        outputs = (step.get("Arguments") or {}).get("ProcessingOutputConfig", {}).get("Outputs")
        declared = [o.get("OutputName") for o in outputs or [] if isinstance(o, dict)]
        for i, pf in enumerate(step.get("PropertyFiles") or []):
            path = f"PropertyFiles[{i}]"
            missing = [k for k in ("PropertyFileName", "OutputName", "FilePath") if not pf.get(k)]
            if missing:
                self.problem(step["Name"], path, f"missing {', '.join(missing)}")
            elif pf["OutputName"] not in declared:
                self.problem(
                    step["Name"],
                    f"{path}.OutputName",
                    f"{pf['OutputName']!r} is not an output of the step (outputs: {declared})",
                )

    def condition_step(self, step: dict[str, Any]) -> None:
        name, args = str(step["Name"]), self.arguments(step)
        if args is None:
            return
        for key in sorted(set(args) - {"Conditions", "IfSteps", "ElseSteps"}):
            self.problem(name, key, "unknown member; valid members: Conditions, IfSteps, ElseSteps")
        for key in ("IfSteps", "ElseSteps"):
            if not isinstance(args.get(key, []), list):
                self.problem(name, key, "must be a list of steps")
        conditions = args.get("Conditions")
        if not isinstance(conditions, list) or not conditions:
            self.problem(name, "Conditions", "missing: a non-empty list of conditions")
            return
        for i, condition in enumerate(conditions):
            self.condition(condition, name, f"Conditions[{i}]")

    def condition(self, condition: Any, where: str, path: str) -> None:
        kind = condition.get("Type") if isinstance(condition, dict) else None
        if kind not in CONDITION_OPERANDS:
            known = ", ".join(CONDITION_OPERANDS)
            self.problem(
                where, join_path(path, "Type"), f"{kind!r} is not a condition type ({known})"
            )
            return
        operands = CONDITION_OPERANDS[kind]
        for key in sorted(set(condition) - {"Type", *operands}):
            self.problem(where, join_path(path, key), f"unknown member of a {kind} condition")
        missing = [k for k in operands if k not in condition]
        for key in missing:
            self.problem(where, join_path(path, key), f"missing: a {kind} condition needs it")
        if missing:
            return
        if kind == "Not":
            self.condition(condition["Expression"], where, join_path(path, "Expression"))
            return
        if kind == "Or":
            for i, inner in enumerate(condition["Conditions"]):
                self.condition(inner, where, join_path(join_path(path, "Conditions"), i))
            return
        values, failed = self.fill({k: condition[k] for k in operands}, where, path)
        if not failed:
            try:
                evaluate_condition({"Type": kind, **values}, self.filler.context)
            except (TypeError, ExpressionError) as exc:
                self.problem(where, path, f"cannot evaluate: {exc}")

    def fail_step(self, step: dict[str, Any]) -> None:
        name, args = str(step["Name"]), self.arguments(step)
        if args is None:
            return
        for key in sorted(set(args) - {"ErrorMessage"}):
            self.problem(name, key, "unknown member; valid members: ErrorMessage")
        message, failed = self.fill(args.get("ErrorMessage", ""), name, "ErrorMessage")
        if not failed and not isinstance(message, str):
            self.problem(name, "ErrorMessage", f"resolves to {type(message).__name__}, not text")


def _parameters(definition: Mapping[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """Each parameter's default (or a placeholder of its type); bad declarations recorded."""
    values: dict[str, Any] = {}
    for i, p in enumerate(definition.get("Parameters") or []):
        name, kind = p.get("Name") or f"[{i}]", p.get("Type")
        if kind not in _PARAMETER_TYPES:
            known = ", ".join(_PARAMETER_TYPES)
            problems.append(Problem("Parameters", name, f"type {kind!r} is not one of {known}"))
            continue
        default = p.get("DefaultValue", _FALLBACK_DEFAULTS[kind])
        valid = _PARAMETER_TYPES[kind]
        if not isinstance(default, valid) or (kind != "Boolean" and isinstance(default, bool)):
            needs = " or ".join(t.__name__ for t in valid)
            problems.append(
                Problem(
                    "Parameters",
                    name,
                    f"default {default!r} is {type(default).__name__}; "
                    f"the parameter's type {kind} needs {needs}",
                )
            )
        enum = p.get("EnumValues")
        if enum is not None and default not in enum:
            problems.append(Problem("Parameters", name, f"default {default!r} is not in {enum}"))
        values[name] = default
    return values


def _steps_by_name(definition: Mapping[str, Any], problems: list[Problem]) -> dict[str, Any]:
    steps: dict[str, dict[str, Any]] = {}
    for i, step in enumerate(all_steps(definition.get("Steps") or [])):
        name = step.get("Name")
        if not isinstance(name, str) or not name:
            problems.append(Problem("Steps", f"[{i}]", "a step without a Name"))
        elif name in steps:
            problems.append(Problem(name, "Name", "two steps have this name"))
        else:
            steps[name] = step
    return steps


def check_definition(
    definition: Mapping[str, Any],
    *,
    region: str = "us-east-1",
    pipeline_name: str = "lepton",
    account: str | None = None,
) -> DefinitionReport:
    """Check every step of `definition` (parsed JSON) offline; see the module docstring."""
    definition = copy.deepcopy(dict(definition))
    problems: list[Problem] = []
    parameters = _parameters(definition, problems)
    steps = _steps_by_name(definition, problems)
    filler = Filler.create(
        steps, parameters, region=region, pipeline_name=pipeline_name, account=account
    )
    checker = _Checker(filler, problems)
    handlers = {"Condition": checker.condition_step, "Fail": checker.fail_step}
    checked = []
    for name, step in steps.items():
        kind = str(step.get("Type"))
        for i, dep in enumerate(step.get("DependsOn") or []):
            if dep not in steps:
                checker.problem(name, f"DependsOn[{i}]", f"no step named {dep!r}")
        if kind in STEP_APIS:
            checker.request(step, STEP_APIS[kind])
            checked.append(CheckedStep(name, kind, STEP_APIS[kind].create))
        elif kind in handlers:
            handlers[kind](step)
            checked.append(CheckedStep(name, kind, CONTROL_STEPS[kind]))
        else:
            known = ", ".join([*STEP_APIS, *CONTROL_STEPS])
            checker.problem(
                name, "Type", f"preflight has no rules for step type {kind!r} ({known})"
            )
            checked.append(CheckedStep(name, kind, None))
    return DefinitionReport(tuple(checked), tuple(checker.problems))
