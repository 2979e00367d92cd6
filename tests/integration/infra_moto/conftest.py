"""The `aws` fixture: infra/template.yaml deployed once into moto for this package.

Package-scoped, and this directory is a package of its own, so that the stack is created once
for all the infra_moto modules and moto's mock (which patches botocore and sets fake
credentials in the environment while active) is stopped as soon as the last of them has run:
it cannot leak into other integration tests that talk to real services (SeaweedFS on
127.0.0.1) or start their own mock_aws (which would reset the stack's backends).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from pipelines.aws.stack import deploy_stack
from tests.integration.infra_moto.stack import PARAMS, REGION, STACK


@pytest.fixture(scope="package")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One moto account with the stack deployed; yields outputs and a client factory."""
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name=REGION)
        logging.getLogger("moto").setLevel(logging.ERROR)  # one "No Moto support" line per skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = deploy_stack(STACK, cfn, parameters=PARAMS, poll_seconds=0)
        unsupported = {
            str(w.message).split("parse ")[1].split(" but")[0]
            for w in caught
            if "not supported by moto" in str(w.message)
        }
        yield {
            "outputs": result.outputs,
            "result": result,
            "unsupported": unsupported,
            "client": lambda name, **kw: boto3.client(name, region_name=REGION, **kw),
        }
