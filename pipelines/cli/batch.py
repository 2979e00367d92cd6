"""`lepton batch predict IN OUT [--model REF]`: classify every image under a prefix or folder."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from pipelines.batch.config import JOB_FIELDS, BatchConfig
from pipelines.settings import load_settings
from training.serialize import add_config_options, config_from_namespace


def register(sub: argparse._SubParsersAction) -> None:
    batch = sub.add_parser("batch", help="batch inference with a registered model")
    actions = batch.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser(
        "predict",
        help="classify every image under IN; <key>.out JSON Lines results under OUT",
        description="Runs the pipeline's Batch step as a job of its own: locally in the step "
        "environment, on AWS (LEPTON_MODE=aws) as a SageMaker Processing job on the project's "
        "image. A rerun skips keys whose .out exists; bad files get an error record.",
    )
    p.add_argument("input", help="s3:// prefix (or, locally, a folder) of images")
    p.add_argument("output", help="s3:// prefix (or, locally, a folder) for the results")
    p.add_argument(
        "--model",
        help="locally models:/NAME@champion (default), models:/NAME/VERSION, s3://... or a "
        "folder; on AWS a model package ARN (default: the group's newest Approved)",
    )
    p.add_argument("--no-wait", action="store_true", help="AWS: start the job and return")
    add_config_options(p, BatchConfig, skip=JOB_FIELDS)
    p.set_defaults(func=_predict)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The BatchConfig fields given on the command line, checked here (the job parses them
    again), so a bad value fails before anything starts."""
    given = {
        f.name: getattr(args, f"config_{f.name}")
        for f in dataclasses.fields(BatchConfig)
        if f.name not in JOB_FIELDS and getattr(args, f"config_{f.name}") is not None
    }
    jobs_own = {"input": args.input, "output": args.output, "model": args.model or "-"}
    config_from_namespace(BatchConfig, args, given=jobs_own)  # raises ValueError
    return given


def _predict(args: argparse.Namespace) -> int:
    settings = load_settings()
    if settings.mode == "aws":
        return _predict_aws(args, settings)
    from pipelines.batch.job import run_local

    ref = args.model or f"models:/{settings.registered_model_name}@champion"
    report = run_local(settings, args.input, args.output, ref, _options(args))
    _print_report(report, args.output)
    return 0


def _predict_aws(args: argparse.Namespace, settings: Any) -> int:
    from pipelines.aws.batch import start_job, wait_job
    from pipelines.aws.clients import sagemaker_client
    from pipelines.batch.job import read_report
    from pipelines.cli.pipeline_aws import with_recorded_image
    from pipelines.definition.config import aws_from_settings
    from pipelines.storage import s3_client

    sm = sagemaker_client(settings)
    cfg = with_recorded_image(aws_from_settings(settings), settings)
    name = start_job(
        cfg,
        settings,
        args.input,
        args.output,
        args.model,
        _options(args),
        sm=sm,
        s3=s3_client(settings),
    )
    if args.no_wait:
        print(
            f"started {name}; follow it with `aws sagemaker describe-processing-job "
            f"--processing-job-name {name}`"
        )
        return 0
    wait_job(sm, name)
    _print_report(read_report(settings, args.output), args.output)
    return 0


def _print_report(report: dict[str, Any], output: str) -> None:
    print(
        f"{report['predicted']} classified, {report['failed']} failed, {report['skipped']} "
        f"skipped (done before) of {report['total']}; {report['images_per_s']} images/s; "
        f"results under {output}"
    )
    for failure in report.get("failures", [])[:10]:
        print(f"  {failure['key']}: {failure['reason']} {failure['detail']}", file=sys.stderr)
