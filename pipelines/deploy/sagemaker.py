"""Deploy on SageMaker: an Approved model package becomes a model, an endpoint config and the
endpoint (created, or updated in place)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipelines.deploy.messages import PENDING_MESSAGE, REJECTED_MESSAGE, DeployError, Printer, say


def _resource_name(*parts: str) -> str:
    """A SageMaker resource name (<= 63 chars of [a-zA-Z0-9-]) unique per second."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = "-".join(p for p in parts if p).replace("_", "-")
    return f"{base[: 63 - len(stamp) - 1]}-{stamp}"


def deploy_sagemaker(
    client: Any,
    package_arn: str,
    endpoint_name: str,
    instance_type: str,
    instance_count: int = 1,
    role_arn: str | None = None,
    wait: bool = False,
    out: Printer = say,
) -> str | None:
    """Deploy an Approved model package to a real-time endpoint; returns its name, else None."""
    from botocore.exceptions import ClientError

    from pipelines.register import sagemaker as smr

    status = smr.approval_status(client, package_arn)
    if status == smr.REJECTED:
        out(f"{package_arn} is Rejected; {REJECTED_MESSAGE}")
        return None
    if status != smr.APPROVED:
        out(f"{package_arn} is {status}; {PENDING_MESSAGE}")
        return None
    if not role_arn:
        raise DeployError("--role-arn is required to create a SageMaker model")
    package_version = package_arn.rsplit("/", 1)[-1]
    model_name = _resource_name(endpoint_name, package_version)
    client.create_model(
        ModelName=model_name,
        ExecutionRoleArn=role_arn,
        PrimaryContainer={"ModelPackageName": package_arn},
    )
    config_name = model_name
    client.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model_name,
                "InstanceType": instance_type,
                "InitialInstanceCount": int(instance_count),
            }
        ],
    )
    try:
        client.describe_endpoint(EndpointName=endpoint_name)
        exists = True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ValidationException":
            raise
        exists = False
    if exists:
        client.update_endpoint(EndpointName=endpoint_name, EndpointConfigName=config_name)
        out(f"updating endpoint {endpoint_name} to {package_arn} (config {config_name})")
    else:
        client.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=config_name)
        out(f"creating endpoint {endpoint_name} for {package_arn} (config {config_name})")
    if wait:
        client.get_waiter("endpoint_in_service").wait(EndpointName=endpoint_name)
        out(f"endpoint {endpoint_name} is InService")
    return endpoint_name
