"""The Deploy step on SageMaker: report, never deploy.

On AWS the endpoint changes only through an approval: the stack's approval rule runs its
DeployFunction, which points the endpoint at the approved package (infra/template.yaml). IAM
keeps it so: the pipeline's execution role may neither approve a package nor touch an endpoint.
This step says where the registered package stands and what happens next.
"""

from __future__ import annotations

from typing import Any

from pipelines.deploy.messages import PENDING_MESSAGE, REJECTED_MESSAGE, Printer, say


def report_sagemaker(client: Any, package_arn: str, endpoint_name: str, out: Printer = say) -> str:
    """The package's approval status, said in words; returns the status."""
    from pipelines.register import sagemaker as smr

    status = smr.approval_status(client, package_arn)
    if status == smr.REJECTED:
        out(f"{package_arn} is Rejected; {REJECTED_MESSAGE}")
    elif status == smr.APPROVED:
        out(
            f"{package_arn} is Approved: the stack's approval rule deploys it (its DeployFunction "
            f"points endpoint {endpoint_name} at it); this step changes nothing"
        )
    else:
        out(
            f"{package_arn} is {status}; {PENDING_MESSAGE} (approving it, e.g. with `lepton model "
            f"approve`, deploys it to {endpoint_name} through the approval rule)"
        )
    return status
