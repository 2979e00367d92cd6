"""SageMaker Processing entry point of the deploy step: serve an approved model, never another.

    python3 -m pipelines.deploy.step --model-package-arn REF --endpoint-name NAME

``REF`` decides where the endpoint lives:
- ``arn:aws:sagemaker:...:model-package/...`` (AWS): the step reports the package's status and
  deploys nothing: an approval deploys, through the stack's approval rule and DeployFunction,
  and IAM denies the pipeline's role any endpoint change (pipelines/deploy/sagemaker.py).
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
    p.add_argument("--timeout", type=float, default=120.0, help="local: seconds to wait for /ping")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ref = str(args.model_package_arn).strip()
    try:
        if ref.startswith("arn:"):
            from pipelines.aws.clients import sagemaker_client
            from pipelines.deploy.sagemaker import report_sagemaker

            report_sagemaker(sagemaker_client(load_settings()), ref, args.endpoint_name)
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
    from inference.quick_exit import quick_exit

    sys.exit(quick_exit(main()))
