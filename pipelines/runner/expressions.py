"""Resolve the expression language of a SageMaker pipeline definition.

Handles `{"Get": "Parameters.X"}`, `{"Get": "Execution.PipelineExecutionId"}`,
`{"Get": "Steps.NAME.<property path>"}`, `{"Std:Join": ...}`, `{"Std:JsonGet": ...}` and the
condition types a ConditionStep uses. Pure functions over plain data: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Property path tokens: `.Name`, `['Name']` / `["Name"]`, `[0]`.
_TOKEN = re.compile(r"\.?([A-Za-z0-9_:-]+)|\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]|\[(\d+)\]")


class ExpressionError(ValueError):
    """A reference that cannot be resolved; says which and why."""


@dataclass
class Context:
    """What expressions can refer to while an execution runs."""

    parameters: Mapping[str, Any]
    execution: Mapping[str, Any]
    step_properties: Mapping[str, Any]  # step name -> its properties document
    property_files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # step name -> PropertyFileName -> parsed JSON


def parse_path(path: str) -> list[str | int]:
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if match is None:
            raise ExpressionError(f"cannot parse property path {path!r} at {path[pos:]!r}")
        name, quoted1, quoted2, index = match.groups()
        if index is not None:
            tokens.append(int(index))
        else:
            tokens.append(name or quoted1 or quoted2 or "")
        pos = match.end()
    return tokens


def walk(document: Any, tokens: list[str | int], where: str) -> Any:
    """Follow tokens into nested dicts/lists; a string token on a list selects by *Name."""
    current = document
    for token in tokens:
        if isinstance(current, Mapping) and isinstance(token, str) and token in current:
            current = current[token]
        elif isinstance(current, list) and isinstance(token, int) and token < len(current):
            current = current[token]
        elif isinstance(current, list) and isinstance(token, str):
            # SageMaker lists such as Outputs['dataset'] are indexed by their *Name field.
            matches = [
                item
                for item in current
                if isinstance(item, Mapping)
                and any(k.endswith("Name") and v == token for k, v in item.items())
            ]
            if not matches:
                raise ExpressionError(f"{where}: no element named {token!r}")
            current = matches[0]
        else:
            raise ExpressionError(f"{where}: {token!r} not found")
    return current


def get(reference: str, ctx: Context) -> Any:
    tokens = parse_path(reference)
    if not tokens:
        raise ExpressionError("empty reference")
    head = tokens[0]
    if head == "Parameters":
        name = tokens[1]
        if name not in ctx.parameters:
            raise ExpressionError(f"unknown parameter {name!r}")
        return ctx.parameters[name]  # type: ignore[index]
    if head == "Execution":
        return walk(ctx.execution, tokens[1:], reference)
    if head == "Steps":
        step = str(tokens[1])
        if len(tokens) >= 4 and tokens[2] == "PropertyFiles":
            files = ctx.property_files.get(step, {})
            name = str(tokens[3])
            if name not in files:
                raise ExpressionError(f"{reference}: step {step!r} has no property file {name!r}")
            return files[name]
        if step not in ctx.step_properties:
            raise ExpressionError(f"{reference}: step {step!r} has not run (or has no properties)")
        return walk(ctx.step_properties[step], tokens[2:], reference)
    raise ExpressionError(f"unsupported reference {reference!r}")


def resolve(value: Any, ctx: Context) -> Any:
    """Resolve every expression inside `value` (recursively); plain values pass through."""
    if isinstance(value, list):
        return [resolve(v, ctx) for v in value]
    if not isinstance(value, Mapping):
        return value
    if set(value) == {"Get"}:
        return get(value["Get"], ctx)
    if set(value) == {"Std:Join"}:
        spec = value["Std:Join"]
        return str(spec.get("On", "")).join(_to_text(resolve(v, ctx)) for v in spec["Values"])
    if set(value) == {"Std:JsonGet"}:
        spec = value["Std:JsonGet"]
        document = resolve(spec["PropertyFile"], ctx)
        if isinstance(document, Mapping) and "Get" in document:
            document = get(document["Get"], ctx)
        path = resolve(spec["Path"], ctx)
        return walk(document, parse_path(path), f"JsonGet {path}")
    return {k: resolve(v, ctx) for k, v in value.items()}


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def references(value: Any) -> set[str]:
    """Names of the steps that `value` refers to (for dependency ordering)."""
    found: set[str] = set()
    if isinstance(value, list):
        for v in value:
            found |= references(v)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if k == "Get" and isinstance(v, str) and v.startswith("Steps."):
                found.add(str(parse_path(v)[1]))
            else:
                found |= references(v)
    return found


_COMPARATORS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "Equals": ("==", lambda a, b: a == b),
    "GreaterThan": (">", lambda a, b: a > b),
    "GreaterThanOrEqualTo": (">=", lambda a, b: a >= b),
    "LessThan": ("<", lambda a, b: a < b),
    "LessThanOrEqualTo": ("<=", lambda a, b: a <= b),
}


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def evaluate_condition(condition: Mapping[str, Any], ctx: Context) -> tuple[bool, str]:
    """Evaluate one condition; return (outcome, a human-readable reason)."""
    kind = condition["Type"]
    if kind in _COMPARATORS:
        symbol, compare = _COMPARATORS[kind]
        left = _number(resolve(condition["LeftValue"], ctx))
        right = _number(resolve(condition["RightValue"], ctx))
        outcome = bool(compare(left, right))
        return outcome, f"{_fmt(left)} {symbol} {_fmt(right)}: {'yes' if outcome else 'no'}"
    if kind == "Not":
        inner, reason = evaluate_condition(condition["Expression"], ctx)
        return not inner, f"not ({reason})"
    if kind == "Or":
        results = [evaluate_condition(c, ctx) for c in condition["Conditions"]]
        return any(r for r, _ in results), " or ".join(f"({r})" for _, r in results)
    if kind == "In":
        value = resolve(condition["QueryValue"], ctx)
        options = [resolve(v, ctx) for v in condition["Values"]]
        outcome = value in options
        return outcome, f"{value!r} in {options!r}: {'yes' if outcome else 'no'}"
    raise ExpressionError(f"unsupported condition type {kind!r}")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else repr(value)
