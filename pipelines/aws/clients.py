"""The AWS control-plane clients (SageMaker, CloudFormation, IAM, ECR), built from `Settings`.

boto3's default credential chain and `settings.region`; botocore itself honours
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` (a moto server in tests, VPC endpoints), so
the same code talks to AWS or moto. S3 clients are `pipelines.storage.s3_client`.
"""

from __future__ import annotations

from typing import Any

import boto3

from pipelines.settings import Settings


def sagemaker_client(settings: Settings) -> Any:
    return boto3.session.Session().client("sagemaker", region_name=settings.region)


def cloudformation_client(settings: Settings) -> Any:
    return boto3.session.Session().client("cloudformation", region_name=settings.region)


def iam_client(settings: Settings) -> Any:
    return boto3.session.Session().client("iam", region_name=settings.region)


def ecr_client(settings: Settings, region: str | None = None) -> Any:
    """ECR in `region` (an image's own region), else the settings' region."""
    return boto3.session.Session().client("ecr", region_name=region or settings.region)


def has_credentials() -> bool:
    """Whether boto3's default chain finds credentials (no AWS API call; on EC2 it may ask the
    instance metadata service, as every boto3 client would)."""
    return boto3.session.Session().get_credentials() is not None
