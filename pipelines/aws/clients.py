"""The AWS control-plane clients (SageMaker, CloudFormation, IAM, ECR, ...), built from `Settings`.

boto3's default credential chain and `settings.region`; botocore itself honours
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` (a moto server in tests, VPC endpoints), so
the same code talks to AWS or moto. S3 clients are `pipelines.storage.s3_client`.
"""

from __future__ import annotations

from typing import Any

import boto3

from pipelines.settings import Settings


def aws_client(settings: Settings, service: str, region: str | None = None) -> Any:
    """A boto3 client of `service` in `region` (default: the settings' region)."""
    return boto3.session.Session().client(service, region_name=region or settings.region)


def sagemaker_client(settings: Settings) -> Any:
    return aws_client(settings, "sagemaker")


def cloudformation_client(settings: Settings) -> Any:
    return aws_client(settings, "cloudformation")


def iam_client(settings: Settings) -> Any:
    return aws_client(settings, "iam")


def ecr_client(settings: Settings, region: str | None = None) -> Any:
    """ECR in `region` (an image's own region), else the settings' region."""
    return aws_client(settings, "ecr", region)


def has_credentials() -> bool:
    """Whether boto3's default chain finds credentials (no AWS API call; on EC2 it may ask the
    instance metadata service, as every boto3 client would)."""
    return boto3.session.Session().get_credentials() is not None
