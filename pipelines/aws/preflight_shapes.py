"""botocore's SageMaker service model, as preflight uses it (no AWS call: the model ships with
botocore).

- `STEP_APIS`: which API a pipeline step type's `Arguments` are the request of, and which
  Describe* API's output its properties are.
- `validate(params, shape)`: botocore's own `ParamValidator` (required members, unknown members,
  types, minimum lengths and values), extended with the constraints the same model states but
  botocore leaves to the server: maximum lengths and values, enums and patterns. Errors come
  back as `(path, message)` pairs, the path in botocore's notation (`ProcessingInputs[1].S3Input`).
- `follow(shape, tokens, echo)`: a property path (`ModelArtifacts.S3ModelArtifacts`) into a
  Describe* output shape; the shape it ends on, or `PathError`.
- `placeholder(shape, hints)`: a value of the shape's kind that satisfies its constraints (an
  ARN for `...Arn` shapes, an s3:// URI for URI shapes, a job name for names).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from botocore.model import Shape, StructureShape
from botocore.validate import ParamValidator, ValidationErrors

SERVICE = "sagemaker"


@dataclass(frozen=True)
class StepApi:
    create: str  # the API whose request the step's Arguments are
    describe: str  # the API whose output its properties are
    name_member: str | None  # the request member SageMaker fills in (the job's name)


STEP_APIS: dict[str, StepApi] = {
    "Processing": StepApi("CreateProcessingJob", "DescribeProcessingJob", "ProcessingJobName"),
    "Training": StepApi("CreateTrainingJob", "DescribeTrainingJob", "TrainingJobName"),
    # The SDK's ModelStep(register) and RegisterModel both register through CreateModelPackage.
    "RegisterModel": StepApi("CreateModelPackage", "DescribeModelPackage", None),
    "Model": StepApi("CreateModel", "DescribeModel", "ModelName"),  # ModelStep(create)
    "Transform": StepApi("CreateTransformJob", "DescribeTransformJob", "TransformJobName"),
}


@cache
def _service_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(SERVICE)


def input_shape(operation: str) -> StructureShape:
    return _service_model().operation_model(operation).input_shape


def output_shape(operation: str) -> StructureShape:
    return _service_model().operation_model(operation).output_shape


@cache
def _pattern(raw: str) -> re.Pattern[str] | None:
    """The model's pattern compiled for Python, or None where it uses Java-only syntax
    (`\\p{L}`, `\\uD800` ranges): such a pattern is not checked."""
    try:
        return re.compile(raw)
    except re.error:
        return None


def _limit_errors(value: Any, size: int | float, shape: Shape) -> list[tuple[str, dict[str, Any]]]:
    """Violations of max, enum and pattern (botocore checks only min)."""
    meta = shape.metadata
    found: list[tuple[str, dict[str, Any]]] = []
    if "max" in meta and size > meta["max"]:
        found.append(("above max", {"param": value, "size": size, "max": meta["max"]}))
    if isinstance(value, str):
        enum = meta.get("enum")
        if enum and value not in enum:
            found.append(("not in enum", {"param": value, "enum": enum, "shape": shape.name}))
        # SageMaker's API reference shows these patterns anchored (^...$): match the whole value
        compiled = _pattern(meta["pattern"]) if "pattern" in meta else None
        if compiled is not None and not compiled.fullmatch(value):
            found.append(("pattern mismatch", {"param": value, "pattern": meta["pattern"]}))
    return found


class _Errors(ValidationErrors):
    """botocore's error collector, with the errors kept as data rather than one report string."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def report(self, name: str, reason: str, **kwargs: Any) -> None:
        super().report(name, reason, **kwargs)
        self.found.append(_describe(name.lstrip("."), reason, kwargs))


def _with_limits(
    base: Callable[..., None], kinds: type | tuple[type, ...], size: Callable[[Any], float]
) -> Callable[..., None]:
    """botocore's check of one shape type, then max/enum/pattern on a value of the right type."""

    def check(self: ParamValidator, param: Any, shape: Shape, errors: Any, name: str) -> None:
        base(self, param, shape, errors, name)
        if isinstance(param, kinds):
            for reason, kwargs in _limit_errors(param, size(param), shape):
                errors.report(name, reason, **kwargs)

    return check


class _Validator(ParamValidator):
    """`ParamValidator` plus max/enum/pattern, checked in the same walk over the shape."""

    VALIDATED_METADATA_ATTRS = ParamValidator.VALIDATED_METADATA_ATTRS | {"max", "enum", "pattern"}

    def validate(self, params: Any, shape: Shape) -> _Errors:
        errors = _Errors()
        self._validate(params, shape, errors, name="")
        return errors

    _validate_string = _with_limits(ParamValidator._validate_string, str, len)
    _validate_list = _with_limits(ParamValidator._validate_list, (list, tuple), len)
    _validate_map = _with_limits(ParamValidator._validate_map, dict, len)
    _validate_integer = _with_limits(ParamValidator._validate_integer, int, int)
    _validate_long = _with_limits(ParamValidator._validate_long, int, int)
    _validate_double = _with_limits(ParamValidator._validate_double, (int, float), float)
    _validate_float = _validate_double


def validate(params: Mapping[str, Any], shape: Shape) -> list[tuple[str, str]]:
    """Every constraint violation of `params` against `shape`, as (path, message)."""
    return _Validator().validate(params, shape).found


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _types(names: Sequence[str]) -> str:
    return " or ".join(re.sub(r"<class '([^']+)'>", r"\1", n) for n in names)


def _describe(name: str, reason: str, kw: Mapping[str, Any]) -> tuple[str, str]:
    """(path, message) for one botocore (or `_limit_errors`) error."""
    if reason == "missing required field":
        return _member(name, kw["required_name"]), "missing: a required member"
    if reason == "unknown field":
        valid = ", ".join(kw["valid_names"])
        return _member(name, kw["unknown_param"]), f"unknown member; valid members: {valid}"
    if reason == "invalid type":
        value = kw["param"]
        return name, (
            f"{_short(value)} is {type(value).__name__}, expected {_types(kw['valid_types'])}"
        )
    if reason == "invalid range":
        return name, f"{kw['param']} is below the minimum {kw['min_allowed']}"
    if reason == "invalid length":
        return name, f"length {kw['param']} is below the minimum {kw['min_allowed']}"
    if reason == "above max":
        what = "length" if isinstance(kw["param"], (str, list, tuple, dict)) else "value"
        return name, f"{what} {kw['size']} is above the maximum {kw['max']}"
    if reason == "not in enum":
        enum = kw["enum"]
        allowed = ", ".join(enum) if len(enum) <= 12 else f"the {len(enum)} values of {kw['shape']}"
        return name, (
            f"{_short(kw['param'])} is not one of {allowed} "
            f"(botocore {botocore_version()}'s list: update botocore if the value is new)"
        )
    if reason == "pattern mismatch":
        return name, f"{_short(kw['param'])} does not match the pattern {kw['pattern']}"
    return name, f"{reason}: {dict(kw)}"


def botocore_version() -> str:
    import botocore

    return str(botocore.__version__)


def _member(parent: str, member: str) -> str:
    return f"{parent}.{member}" if parent else member


# ---- property paths into Describe* output shapes -----------------------------------------


class PathError(ValueError):
    """A property path that the output shape (or the step's own request) does not have."""


def _item_names(item: Any) -> set[str]:
    """The names a list element is selected by (`Outputs['dataset']`: its `*Name` fields)."""
    if not isinstance(item, Mapping):
        return set()
    return {v for k, v in item.items() if k.endswith("Name") and isinstance(v, str)}


def _is_literal_container(value: Any) -> bool:
    return isinstance(value, list) or (
        isinstance(value, Mapping) and not any(k == "Get" or k.startswith("Std:") for k in value)
    )


def follow(shape: Shape, tokens: Sequence[str | int], echo: Any) -> Shape:
    """The shape at `tokens` below `shape`. `echo` is the step's request at the same place
    (Describe* outputs echo the request): where it holds a literal list or map, a name or key
    selected must be one the step declares."""
    for token in tokens:
        kind = shape.type_name
        echo = echo if _is_literal_container(echo) else None
        if kind == "structure":
            members = shape.members  # type: ignore[attr-defined]
            if not isinstance(token, str) or token not in members:
                raise PathError(
                    f"{shape.name} has no member {token!r} (members: {', '.join(members)})"
                )
            shape, echo = members[token], echo.get(token) if isinstance(echo, Mapping) else None
        elif kind == "list":
            if isinstance(token, str) and isinstance(echo, list):
                chosen = [item for item in echo if token in _item_names(item)]
                if not chosen:
                    declared = sorted(set().union(*map(_item_names, echo)))
                    raise PathError(f"no element named {token!r}; the step declares {declared}")
                echo = chosen[0]
            elif isinstance(token, int) and isinstance(echo, list):
                echo = echo[token] if token < len(echo) else None
            else:
                echo = None
            shape = shape.member  # type: ignore[attr-defined]
        elif kind == "map":
            if isinstance(echo, Mapping) and token not in echo:
                raise PathError(f"no key {token!r}; the step sets {sorted(echo)}")
            shape = shape.value  # type: ignore[attr-defined]
            echo = echo.get(token) if isinstance(echo, Mapping) else None
        else:
            raise PathError(f"{shape.name} is a {kind}: it has no {token!r}")
    return shape


# ---- placeholders --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hints:
    """What a placeholder for one step's properties is made of."""

    step: str
    job_name: str  # the name SageMaker gives the step's job
    region: str
    account: str

    def strings(self, shape: Shape) -> list[str]:
        """Candidates for a string shape, the likeliest kind first."""
        arn_kind = re.sub(r"(?<!^)(?=[A-Z])", "-", shape.name.removesuffix("Arn")).lower()
        arn = f"arn:aws:sagemaker:{self.region}:{self.account}:{arn_kind}/{self.job_name}"
        uri = f"s3://preflight-placeholder/{self.step}/{shape.name}"
        if shape.name.endswith("Arn"):
            return [arn, uri, self.job_name]
        if "Uri" in shape.name or "Url" in shape.name or "S3" in shape.name:
            return [uri, arn, self.job_name]
        return [self.job_name, uri, arn]


def placeholder(shape: Shape, hints: Hints, depth: int = 0) -> Any:
    """A value of `shape`'s type that satisfies its constraints, standing in for a property
    of a step that has not run."""
    kind, meta = shape.type_name, shape.metadata
    if kind == "string":
        if meta.get("enum"):
            return meta["enum"][0]
        candidates = hints.strings(shape)
        fits = [c for c in candidates if not _limit_errors(c, len(c), shape)]
        return (fits or candidates)[0]
    if kind in ("integer", "long"):
        return max(1, int(meta.get("min", 1)))
    if kind in ("float", "double"):
        return 0.5
    if kind == "boolean":
        return False
    if kind == "timestamp":
        return "2026-01-01T00:00:00Z"
    if depth > 4:  # recursive shapes
        return {}
    if kind == "structure":
        required = meta.get("required", [])
        return {m: placeholder(shape.members[m], hints, depth + 1) for m in required}  # type: ignore[attr-defined]
    if kind == "list":
        return [placeholder(shape.member, hints, depth + 1)]  # type: ignore[attr-defined]
    return {}
