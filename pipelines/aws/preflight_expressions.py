"""Pipeline expressions filled with placeholders, for preflight's offline checks.

`Filler.fill` resolves every expression in a step's arguments with the local runner's own
resolver (`pipelines.runner.expressions.resolve`) over a context of placeholders: parameters
take their defaults, `Execution.*` plausible values (an execution id, ARNs, dates). Before that,
each `{"Get": "Steps.<Name>.<path>"}` is checked against the Describe* output shape of the
step's API (and against what the step declares, e.g. the output named in `Outputs['dataset']`)
and replaced by a value of the kind that shape says (an s3:// URI, an ARN, the job's name), so
a reference of the wrong kind fails the target's own constraints; each `Std:JsonGet` must read
a property file its step declares.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.aws.preflight_shapes import (
    STEP_APIS,
    Hints,
    PathError,
    follow,
    output_shape,
    placeholder,
)
from pipelines.runner.expressions import Context, ExpressionError, parse_path, resolve

PLACEHOLDER_ACCOUNT = "000000000000"
EXECUTION_ID = "preflight0000"  # the shape of a SageMaker execution id: 12-13 lowercase alnum
PLACEHOLDER_TIME = "2026-01-01T00:00:00Z"
JSON_GET_PLACEHOLDER = 0.5  # a property file's value is only known once its step has run
Errors = list[tuple[str, str]]  # (path, message)


def job_name(step: str) -> str:
    """A name like the one SageMaker gives a pipeline step's job (1-63 of [a-zA-Z0-9-])."""
    clean = re.sub(r"[^a-zA-Z0-9]+", "-", step).strip("-") or "step"
    return f"pipelines-{EXECUTION_ID}-{clean}"[:63].rstrip("-")


def join_path(path: str, key: str | int) -> str:
    """A JSON path in botocore's notation: `Outputs[0].S3Output`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def is_expression(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and any(k == "Get" or k.startswith("Std:") for k in value)
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"malformed expression: missing {exc}"
    return str(exc)


@dataclass
class Filler:
    steps: Mapping[str, dict[str, Any]]  # every step by name, nested ones included
    context: Context
    region: str
    account: str

    @classmethod
    def create(
        cls,
        steps: Mapping[str, dict[str, Any]],
        parameters: Mapping[str, Any],
        *,
        region: str,
        pipeline_name: str,
        account: str | None,
    ) -> Filler:
        account = account or PLACEHOLDER_ACCOUNT
        arn = f"arn:aws:sagemaker:{region}:{account}:pipeline/{pipeline_name}"
        execution = {
            "PipelineExecutionId": EXECUTION_ID,
            "PipelineExecutionArn": f"{arn}/execution/{EXECUTION_ID}",
            "PipelineName": pipeline_name,
            "PipelineArn": arn,
            "StartDateTime": PLACEHOLDER_TIME,
            "CurrentDateTime": PLACEHOLDER_TIME,
        }
        context = Context(parameters=parameters, execution=execution, step_properties={})
        return cls(steps, context, region, account)

    def fill(self, value: Any, path: str = "") -> tuple[Any, Errors]:
        """`value` with every expression resolved to a placeholder, and the expressions that
        did not resolve (their value becomes None)."""
        errors: Errors = []
        return self._fill(value, path, errors), errors

    def _fill(self, value: Any, path: str, errors: Errors) -> Any:
        if is_expression(value):
            try:
                return resolve(self.substitute(value), self.context)
            except (ExpressionError, KeyError, TypeError, AttributeError) as exc:
                errors.append((path, _reason(exc)))
                return None
        if isinstance(value, dict):
            return {k: self._fill(v, join_path(path, k), errors) for k, v in value.items()}
        if isinstance(value, list):
            return [self._fill(v, join_path(path, i), errors) for i, v in enumerate(value)]
        return value

    def substitute(self, value: Any) -> Any:
        """`value` with step property references and JsonGets replaced by placeholders (after
        checking them); what remains is for `resolve`."""
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Get"} and str(value["Get"]).startswith("Steps."):
            return self.property_placeholder(str(value["Get"]))
        if set(value) == {"Std:JsonGet"}:
            return self.json_get(value["Std:JsonGet"])
        unsupported = [k for k in value if k.startswith("Std:") and k != "Std:Join"]
        if unsupported:
            raise ExpressionError(f"unsupported function {unsupported[0]}")
        return {k: self.substitute(v) for k, v in value.items()}

    def property_placeholder(self, reference: str) -> Any:
        tokens = parse_path(reference)
        target = self._step(reference, tokens)
        kind, rest = target.get("Type"), tokens[2:]
        if rest[:1] == ["PropertyFiles"]:
            raise ExpressionError(f"{reference}: a property file is read with Std:JsonGet")
        if not rest:
            raise ExpressionError(f"{reference} names a step, not one of its properties")
        if kind == "Condition" and rest == ["Outcome"]:
            return False
        api = STEP_APIS.get(str(kind))
        if api is None:
            raise ExpressionError(f"{reference}: a {kind} step has no such property")
        try:
            shape = follow(output_shape(api.describe), rest, target.get("Arguments"))
        except PathError as exc:
            raise ExpressionError(
                f"{reference}: not a property of {target['Name']} ({api.describe}: {exc})"
            ) from None
        name = str(target["Name"])
        return placeholder(shape, Hints(name, job_name(name), self.region, self.account))

    def json_get(self, spec: Any) -> Any:
        if not isinstance(spec, dict) or set(spec) != {"PropertyFile", "Path"}:
            raise ExpressionError("Std:JsonGet needs exactly PropertyFile and Path")
        ref = spec["PropertyFile"]
        reference = ref.get("Get") if isinstance(ref, dict) and set(ref) == {"Get"} else None
        tokens = parse_path(reference) if isinstance(reference, str) else []
        if len(tokens) != 4 or tokens[0] != "Steps" or tokens[2] != "PropertyFiles":
            raise ExpressionError(
                "Std:JsonGet: PropertyFile must be a Steps.<step>.PropertyFiles.<name> "
                f"reference, got {ref!r}"
            )
        target = self._step(str(reference), tokens)
        declared = [f.get("PropertyFileName") for f in target.get("PropertyFiles") or []]
        if tokens[3] not in declared:
            raise ExpressionError(
                f"{reference}: step {target['Name']} declares no property file {tokens[3]!r} "
                f"(it declares {declared})"
            )
        path = resolve(self.substitute(spec["Path"]), self.context)
        if not isinstance(path, str) or not path:
            raise ExpressionError(f"Std:JsonGet: Path must be a non-empty string, got {path!r}")
        parse_path(path)
        return JSON_GET_PLACEHOLDER

    def _step(self, reference: str, tokens: list[str | int]) -> dict[str, Any]:
        if len(tokens) < 2 or tokens[0] != "Steps" or str(tokens[1]) not in self.steps:
            name = tokens[1] if len(tokens) > 1 else "?"
            raise ExpressionError(
                f"{reference}: no step named {name!r} (steps: {', '.join(self.steps)})"
            )
        return self.steps[str(tokens[1])]
