"""SageMaker Processing entry point of the deploy step: serve an approved model, never another.

    python3 -m pipelines.deploy.step --model-package-arn REF --endpoint-name NAME \
        --instance-type ml.m5.large [--instance-count 1] [--role-arn ARN] [--wait]

``REF`` decides where the endpoint lives:
- ``arn:aws:sagemaker:...:model-package/...`` (AWS): deployed only if the package is Approved:
  a SageMaker model, an endpoint config, then the endpoint is created or updated (boto3).
- ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (local run): deployed only if the MLflow
  version is Approved: the model is downloaded into ``<state>/endpoint/model``, the running
  local endpoint is stopped and ``python -m inference.server`` started on
  ``127.0.0.1:<endpoint port>``; the step waits until ``/ping`` answers.

A version pending approval is not an error: the step prints ``pending approval: not deployed``
and exits 0 (approve it with ``lepton model approve VERSION``). A Rejected one is never deployed.
Exit status: 0 deployed or deliberately not deployed, 2 invalid reference, 1 other failure.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.deploy.messages import DeployError
from pipelines.register.registry import RegistryError
from pipelines.settings import load_settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy", description="Deploy an approved model.")
    p.add_argument(
        "--model-package-arn",
        required=True,
        help="SageMaker model package ARN, or models:/NAME/VERSION (local)",
    )
    p.add_argument("--endpoint-name", default="lepton-classifier")
    p.add_argument("--instance-type", default="ml.m5.large")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--role-arn", default=None, help="execution role of the SageMaker model")
    p.add_argument("--wait", action="store_true", help="AWS: wait until InService")
    p.add_argument("--timeout", type=float, default=120.0, help="local: seconds to wait for /ping")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ref = str(args.model_package_arn).strip()
    try:
        if ref.startswith("arn:"):
            from pipelines.aws.clients import sagemaker_client
            from pipelines.deploy.sagemaker import deploy_sagemaker

            deploy_sagemaker(
                sagemaker_client(load_settings()),
                ref,
                args.endpoint_name,
                args.instance_type,
                args.instance_count,
                args.role_arn,
                args.wait,
            )
        elif ref.startswith("models:/"):
            from pipelines.deploy.local import deploy_local

            deploy_local(load_settings(), ref, timeout_s=args.timeout)
        else:
            print(
                f"deploy: error: expected an arn:... or models:/... reference, got {ref!r}",
                file=sys.stderr,
            )
            return 2
    except DeployError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
