"""The AWS side of the registry: a SageMaker model package group and its packages.

Every function takes a boto3 ``sagemaker`` client, so the same code runs against AWS or moto
(tests). Statuses are SageMaker's ModelApprovalStatus values; only an Approved package is
deployed (see pipelines/deploy/step.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from pipelines.definition.config import APPROVAL_STATUSES, APPROVED, PENDING, REJECTED  # noqa: F401
from pipelines.definition.names import CONTENT_TYPES, RESPONSE_TYPES


def _check_status(status: str) -> str:
    if status not in APPROVAL_STATUSES:
        raise ValueError(f"approval status must be one of {APPROVAL_STATUSES}, got {status!r}")
    return status


def _not_found(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    message = exc.response.get("Error", {}).get("Message", "")
    return code in ("ValidationException", "ResourceNotFound") and (
        "not found" in message.lower() or "does not exist" in message.lower()
    )


def ensure_model_package_group(client: Any, group: str, description: str = "") -> str:
    """The group's ARN, creating the group if it does not exist (idempotent)."""
    try:
        return client.describe_model_package_group(ModelPackageGroupName=group)[
            "ModelPackageGroupArn"
        ]
    except ClientError as exc:
        if not _not_found(exc):
            raise
    response = client.create_model_package_group(
        ModelPackageGroupName=group,
        ModelPackageGroupDescription=description or "lepton image classifier",
    )
    return response["ModelPackageGroupArn"]


def register_model_package(
    client: Any,
    group: str,
    model_data_url: str,
    image_uri: str,
    approval_status: str = PENDING,
    evaluation_s3_uri: str | None = None,
    *,
    instance_types: Sequence[str] = ("ml.m5.large",),
    environment: dict[str, str] | None = None,
    description: str = "",
    customer_metadata: dict[str, str] | None = None,
) -> str:
    """Register one versioned model package in ``group``; returns its ARN.

    ``evaluation_s3_uri`` (evaluation.json) becomes the package's model-quality statistics.
    """
    container: dict[str, Any] = {"Image": image_uri, "ModelDataUrl": model_data_url}
    if environment:
        container["Environment"] = dict(environment)
    kwargs: dict[str, Any] = {
        "ModelPackageGroupName": group,
        "ModelApprovalStatus": _check_status(approval_status),
        "InferenceSpecification": {
            "Containers": [container],
            "SupportedContentTypes": list(CONTENT_TYPES),
            "SupportedResponseMIMETypes": list(RESPONSE_TYPES),
            "SupportedRealtimeInferenceInstanceTypes": list(instance_types),
            "SupportedTransformInstanceTypes": list(instance_types),
        },
        "Domain": "COMPUTER_VISION",
        "Task": "IMAGE_CLASSIFICATION",
    }
    if description:
        kwargs["ModelPackageDescription"] = description
    if customer_metadata:
        kwargs["CustomerMetadataProperties"] = {k: str(v) for k, v in customer_metadata.items()}
    if evaluation_s3_uri:
        kwargs["ModelMetrics"] = {
            "ModelQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": evaluation_s3_uri}
            }
        }
    return client.create_model_package(**kwargs)["ModelPackageArn"]


def approval_status(client: Any, arn: str) -> str:
    return client.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"]


def set_approval(client: Any, arn: str, status: str, description: str = "") -> None:
    """Set a package's approval status (Approved, Rejected or PendingManualApproval)."""
    kwargs: dict[str, Any] = {
        "ModelPackageArn": arn,
        "ModelApprovalStatus": _check_status(status),
    }
    if description:
        kwargs["ApprovalDescription"] = description
    client.update_model_package(**kwargs)


def latest_approved(client: Any, group: str) -> str | None:
    """The ARN of the group's newest Approved package, or None."""
    response = client.list_model_packages(
        ModelPackageGroupName=group,
        ModelApprovalStatus=APPROVED,
        SortBy="CreationTime",
        SortOrder="Descending",
        MaxResults=1,
    )
    summaries = response.get("ModelPackageSummaryList", [])
    return summaries[0]["ModelPackageArn"] if summaries else None
