"""infra/template.yaml loaded once for its unit tests (tests/unit/test_infra_template*.py), with
helpers to read its resources and resolve its intrinsic functions."""

from __future__ import annotations

import re
from typing import Any

from pipelines.aws.stack import TEMPLATE_PATH, load_template

TEMPLATE = load_template(TEMPLATE_PATH)
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
BUCKETS = [k for k, v in RESOURCES.items() if v["Type"] == "AWS::S3::Bucket"]


def _props(logical_id: str) -> dict[str, Any]:
    return RESOURCES[logical_id]["Properties"]


def _of_type(type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in RESOURCES.items() if v["Type"] == type_}


def _sub(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], template)


def _resolve(value: Any, values: dict[str, str]) -> Any:
    """`value` with every `{"Sub": "...${X}..."}`, `{"Ref": X}` and `{"GetAtt": X}` in it
    resolved from `values` (X like "AWS::Region", "PipelineName" or "DataKey.Arn")."""
    if isinstance(value, dict):
        if set(value) == {"Sub"} and isinstance(value["Sub"], str):
            return _sub(value["Sub"], values)
        if set(value) in ({"Ref"}, {"GetAtt"}):
            return values[next(iter(value.values()))]
        return {k: _resolve(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, values) for v in value]
    return value
