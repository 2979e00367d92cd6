"""`lepton pipeline preflight`: check, before anything is started on AWS, what the pipeline needs.

Offline (no account needed): an execution role is configured, and the definition passes
`preflight_definition.check_definition` (every step's request against the SageMaker API that
runs it, expressions, property references, conditions). Online (AWS mode with credentials): the
role exists and SageMaker may assume it, the artifact and data buckets exist, InputDataUri has
objects, each image in this account's ECR exists, and the model package group exists. Every
check is one line: `NAME: ok`, `NAME: FAILED: reason` or `NAME: skipped: why`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property, partial
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.aws.preflight_definition import DefinitionReport, check_definition
from pipelines.definition.config import PipelineConfig
from pipelines.settings import Settings

OK, FAILED, SKIPPED = "ok", "FAILED", "skipped"
SAGEMAKER_PRINCIPAL = "sagemaker.amazonaws.com"
IMAGE_KEYS = ("ImageUri", "TrainingImage", "Image")  # where requests name container images
_ECR_URI = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repo>[^:@]+)(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, FAILED or SKIPPED
    detail: str = ""

    def line(self) -> str:
        return f"{self.name}: {self.status}" + (f": {self.detail}" if self.detail else "")


def passed(checks: list[Check]) -> bool:
    return all(c.status != FAILED for c in checks)


def offline_reason(
    settings: Settings, *, requested: bool, has_credentials: Callable[[], bool]
) -> str | None:
    """Why the account checks cannot run (None: they can). `has_credentials` is asked last."""
    if requested:
        return "--offline given"
    if settings.mode != "aws":
        return "LEPTON_MODE is not aws (S3 is the local server)"
    if not has_credentials():
        return "no AWS credentials found by boto3's default chain"
    return None


def preflight(
    cfg: PipelineConfig, definition: Mapping[str, Any], settings: Settings, offline: str | None
) -> list[Check]:
    """All checks for `cfg` and the definition built from it; the account ones are listed as
    skipped when `offline` (a reason) is given."""
    checks = offline_checks(cfg, definition)
    for name, probe in account_probes(cfg, definition, settings):
        if offline is not None:
            checks.append(Check(name, SKIPPED, "offline"))
            continue
        try:
            status, detail = probe()
        except (ClientError, BotoCoreError) as exc:
            status, detail = FAILED, str(exc)
        checks.append(Check(name, status, detail))
    return checks


# ---- offline -------------------------------------------------------------------------------


def offline_checks(cfg: PipelineConfig, definition: Mapping[str, Any]) -> list[Check]:
    if cfg.role_arn:
        checks = [Check(f"execution role {cfg.role_arn} configured", OK)]
    else:
        checks = [
            Check(
                "execution role",
                FAILED,
                "none configured: set LEPTON_SAGEMAKER_ROLE_ARN (`lepton infra outputs --format "
                "env` exports it), --role-arn, or --stack",
            )
        ]
    return checks + definition_checks(definition_report(cfg, definition))


def definition_report(cfg: PipelineConfig, definition: Mapping[str, Any]) -> DefinitionReport:
    """`check_definition` with the region, pipeline name and account of `cfg`."""
    return check_definition(
        definition,
        region=cfg.region,
        pipeline_name=cfg.pipeline_name,
        account=_account(cfg.role_arn),
    )


def definition_checks(report: DefinitionReport) -> list[Check]:
    """One line per step checked (and per problem found), plus one for the parameters."""
    groups = [("parameters", "Parameters")]
    for step in report.steps:
        against = f", {step.against}" if step.against else ""
        groups.append((f"step {step.name} ({step.type}{against})", step.name))
    known = {where for _, where in groups}
    groups += [("definition", p.where) for p in report.problems if p.where not in known]
    checks: list[Check] = []
    for label, where in dict.fromkeys(groups):
        problems = report.problems_of(where)
        details = [f"{p.path}: {p.message}" if p.path else p.message for p in problems]
        checks += [Check(label, FAILED, d) for d in details] or [Check(label, OK)]
    return checks


def _account(arn: str | None) -> str | None:
    parts = (arn or "").split(":")
    return parts[4] if len(parts) > 5 and parts[4] else None


# ---- online --------------------------------------------------------------------------------

Probe = Callable[[], tuple[str, str]]  # -> (status, detail)


@dataclass
class _Clients:
    settings: Settings
    _ecr: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def iam(self) -> Any:
        from pipelines.aws.clients import iam_client

        return iam_client(self.settings)

    @cached_property
    def s3(self) -> Any:
        from pipelines.storage import s3_client

        return s3_client(self.settings)

    @cached_property
    def sagemaker(self) -> Any:
        from pipelines.aws.clients import sagemaker_client

        return sagemaker_client(self.settings)

    def ecr(self, region: str) -> Any:
        from pipelines.aws.clients import ecr_client

        if region not in self._ecr:
            self._ecr[region] = ecr_client(self.settings, region)
        return self._ecr[region]


def account_probes(
    cfg: PipelineConfig, definition: Mapping[str, Any], settings: Settings
) -> list[tuple[str, Probe]]:
    """The account checks, named, each to be run only online."""
    from pipelines.storage import split_s3_uri

    clients = _Clients(settings)
    role = cfg.role_arn
    role_name = _role_name(role) if role else "(none)"
    probes: list[tuple[str, Probe]] = [
        (f"execution role {role_name}", partial(_role, role, clients))
    ]
    data_bucket, _ = split_s3_uri(cfg.input_data_uri)
    buckets = {cfg.bucket: "artifact bucket"}
    buckets[data_bucket] = "artifact and data bucket" if data_bucket in buckets else "data bucket"
    for bucket, label in buckets.items():
        probes.append((f"{label} {bucket}", partial(_bucket, bucket, clients)))
    data = cfg.input_data_uri
    probes.append((f"input data {data}", partial(_has_objects, data, clients)))
    for uri in image_uris(definition):
        probes.append((f"image {uri}", partial(_image, uri, clients)))
    group = cfg.model_package_group
    probes.append((f"model package group {group}", partial(_group, group, clients)))
    return probes


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")


def _role_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _role(arn: str | None, clients: _Clients) -> tuple[str, str]:
    if not arn:
        return SKIPPED, "no role configured (see above)"
    name = _role_name(arn)
    try:
        role = clients.iam.get_role(RoleName=name)["Role"]
    except ClientError as exc:
        if _code(exc) == "NoSuchEntity":
            return FAILED, (
                f"role {name} does not exist ({arn}); the stack creates it (`lepton infra "
                "deploy`) and `lepton infra outputs` names it"
            )
        return FAILED, f"cannot read role {name} (needs iam:GetRole): {_message(exc)}"
    if role.get("Arn") != arn:
        return FAILED, f"these credentials find {role.get('Arn')}, not the configured {arn}"
    if not trusts(role.get("AssumeRolePolicyDocument"), SAGEMAKER_PRINCIPAL):
        return FAILED, (
            f"role {name} cannot be assumed by {SAGEMAKER_PRINCIPAL}: its trust policy has no "
            f"Allow of sts:AssumeRole for that service"
        )
    return OK, f"exists, trusted by {SAGEMAKER_PRINCIPAL}"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def trusts(document: Any, service: str) -> bool:
    """Whether a trust policy (a dict, or the URL-encoded JSON IAM may return) allows `service`
    to assume the role. Deny statements and conditions are not evaluated."""
    if isinstance(document, str):
        document = json.loads(unquote(document))
    if not isinstance(document, Mapping):
        return False
    for statement in _as_list(document.get("Statement")):
        if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
            continue
        actions = _as_list(statement.get("Action"))
        if not any(a in ("sts:AssumeRole", "sts:*", "*") for a in actions):
            continue
        principal = statement.get("Principal")
        if principal == "*" or (
            isinstance(principal, Mapping) and service in _as_list(principal.get("Service"))
        ):
            return True
    return False


def _probe(call: Callable[[], object], known: Mapping[str, str]) -> tuple[str, str]:
    """OK if `call` succeeds; else FAILED with the reason for its error code (`known`), or the
    API's own code and message."""
    try:
        call()
    except ClientError as exc:
        return FAILED, known.get(_code(exc), _message(exc))
    return OK, ""


def _bucket(bucket: str, clients: _Clients) -> tuple[str, str]:
    missing = f"bucket {bucket} does not exist (`lepton infra deploy` creates it)"
    return _probe(
        lambda: clients.s3.head_bucket(Bucket=bucket),
        {
            "404": missing,
            "NoSuchBucket": missing,
            "403": f"bucket {bucket} exists but these credentials may not use it (403)",
        },
    )


def _has_objects(uri: str, clients: _Clients) -> tuple[str, str]:
    from pipelines.storage import split_s3_uri

    bucket, key = split_s3_uri(uri)
    # a prefix is a folder (ImageFolder layout); a .jsonl key is a manifest object
    prefix = key if key.endswith(".jsonl") or not key else key.rstrip("/") + "/"
    try:
        listed = clients.s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except ClientError as exc:
        return FAILED, f"cannot list {uri}: {_message(exc)}"
    if not listed.get("KeyCount", 0):
        return FAILED, (
            f"no objects under {uri}; upload images first, e.g. "
            f"`LEPTON_MODE=aws lepton data import mnist-5k {uri}`"
        )
    return OK, ""


def _strings_under(value: Any, keys: tuple[str, ...]) -> Iterator[str]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k in keys and isinstance(v, str):
                yield v
            else:
                yield from _strings_under(v, keys)
    elif isinstance(value, list):
        for v in value:
            yield from _strings_under(v, keys)


def image_uris(definition: Mapping[str, Any]) -> list[str]:
    """Every container image the definition's steps name, sorted."""
    return sorted(set(_strings_under(definition.get("Steps") or [], IMAGE_KEYS)))


@cache
def aws_image_accounts() -> frozenset[str]:
    """The accounts of the SageMaker PyTorch framework images (the SDK's registry table)."""
    from sagemaker.core import image_uris as sdk_images

    found: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key == "registries" and isinstance(value, Mapping):
                    found.update(str(a) for a in value.values())
                else:
                    collect(value)

    collect(sdk_images.config_for_framework("pytorch"))
    return frozenset(found)


def _image(uri: str, clients: _Clients) -> tuple[str, str]:
    match = _ECR_URI.match(uri)
    if match is None:
        return SKIPPED, "not an ECR image URI, not checked"
    account, region, repo = match["account"], match["region"], match["repo"]
    if account in aws_image_accounts():
        return SKIPPED, f"not checked: AWS-owned image (SageMaker framework images, {account})"
    image_id = (
        {"imageDigest": match["digest"]}
        if match["digest"]
        else {"imageTag": match["tag"] or "latest"}
    )
    wanted = next(iter(image_id.values()))
    return _probe(
        lambda: clients.ecr(region).describe_images(
            registryId=account, repositoryName=repo, imageIds=[image_id]
        ),
        {
            "RepositoryNotFoundException": (
                f"repository {repo} does not exist in account {account} ({region})"
            ),
            "ImageNotFoundException": f"repository {repo} has no image {wanted}",
        },
    )


def _group(name: str, clients: _Clients) -> tuple[str, str]:
    try:
        clients.sagemaker.describe_model_package_group(ModelPackageGroupName=name)
    except ClientError as exc:
        if "does not exist" not in str(exc) and _code(exc) != "ResourceNotFound":
            return FAILED, _message(exc)
        return FAILED, (
            f"it does not exist, and the Register step needs it: `lepton infra deploy` creates "
            f"it (stack parameter ModelPackageGroupName={name})"
        )
    return OK, ""
