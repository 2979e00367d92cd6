"""`lepton pipeline aws-definition|preflight|upsert|start|wait|status`: the pipeline on SageMaker.

Role, buckets and names come from settings (`lepton infra outputs --format env` exports them),
or from a stack's outputs with `--stack`; any `PipelineConfig` field can be set as a flag
(`--role-arn`, `--training-instance-type`, `--extra-hyperparameters NAME=VALUE`, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pipelines.definition.config import (
    PENDING,
    PipelineConfig,
    aws_from_settings,
    local_default,
)
from pipelines.settings import Settings, load_settings
from training.serialize import add_config_options, config_from_namespace

SETUPS: dict[str, Callable[[Settings], PipelineConfig]] = {
    "aws": aws_from_settings,
    "local": local_default,
}


def register(actions: argparse._SubParsersAction) -> None:
    from pipelines.cli.args import add_param_option
    from pipelines.definition.parameters import add_parameter_flags

    for name, func, text in (
        ("aws-definition", _definition, "print the SageMaker pipeline definition JSON (offline)"),
        (
            "preflight",
            _preflight,
            "check role, buckets, data, images, model package group and every step's request "
            "before anything starts on AWS (--offline: the definition only)",
        ),
        ("upsert", _upsert, "upload the code bundle and create/update the SageMaker pipeline"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("--setup", choices=sorted(SETUPS), default="aws", help="[aws]")
        p.add_argument("--stack", help="take role, bucket and names from this stack's outputs")
        if name == "aws-definition":
            p.add_argument("--out", type=Path, help="write it to this file instead of stdout")
        if name == "preflight":
            p.add_argument("--offline", action="store_true", help="skip the AWS account checks")
        if name == "upsert":
            p.add_argument(
                "--skip-preflight",
                action="store_true",
                help="do not check the definition's step requests first",
            )
        add_config_options(p, PipelineConfig)
        p.set_defaults(func=func)

    s = actions.add_parser("start", help="start an execution on SageMaker")
    s.add_argument("--pipeline-name", help="default: LEPTON_PIPELINE_NAME or 'lepton'")
    add_parameter_flags(s, PipelineConfig())
    add_param_option(s)
    s.add_argument("--champion-tolerance", type=float, default=PipelineConfig.champion_tolerance)
    s.add_argument("--wait", action="store_true", help="then wait, print and record the result")
    s.set_defaults(func=_start)
    w = actions.add_parser("wait", help="wait for a SageMaker execution to end")
    w.add_argument("execution_arn")
    w.add_argument("--timeout", type=float, default=6 * 3600, help="seconds")
    w.add_argument("--poll", type=float, default=30, help="seconds between polls")
    w.set_defaults(func=_wait)
    st = actions.add_parser(
        "status", help="a SageMaker execution's status (or a pipeline's latest), step by step"
    )
    st.add_argument("target", nargs="?", help="pipeline name or execution ARN")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    if getattr(args, "stack", None):
        from pipelines.aws.clients import cloudformation_client
        from pipelines.aws.stack import settings_from_stack

        settings = settings_from_stack(args.stack, cloudformation_client(settings), os.environ)
    return settings


def config_from_cli(args: argparse.Namespace, settings: Settings) -> PipelineConfig:
    """Named setup (from settings), then the PipelineConfig fields given as options; the AWS
    setup's image is what `lepton image build` recorded unless one is given."""
    cfg = config_from_namespace(PipelineConfig, args, base=SETUPS[args.setup](settings))
    return with_recorded_image(cfg, settings) if args.setup == "aws" else cfg


def with_recorded_image(cfg: PipelineConfig, settings: Settings) -> PipelineConfig:
    """`cfg` with the image `lepton image build` recorded, unless it names one already."""
    if cfg.image_uri or cfg.stock_images:
        return cfg
    from pipelines.aws.image import resolve_image_uri

    return replace(cfg, image_uri=resolve_image_uri(settings))


def _definition(args: argparse.Namespace) -> int:
    from pipelines.definition.build import build_definition

    settings = _settings(args)
    built = build_definition(
        config_from_cli(args, settings), staging_root=settings.state_dir / "code"
    )
    text = json.dumps(built.parsed(), indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


def _preflight(args: argparse.Namespace) -> int:
    from pipelines.aws import preflight as pf
    from pipelines.aws.clients import has_credentials
    from pipelines.definition.build import NoImageError, build_definition

    offline = pf.offline_reason(
        load_settings(), requested=args.offline, has_credentials=has_credentials
    )
    if offline is not None and args.stack:
        raise ValueError(
            f"--stack reads the stack's outputs from AWS; not possible offline ({offline})"
        )
    settings = _settings(args)
    cfg = config_from_cli(args, settings)
    try:
        built = build_definition(cfg, staging_root=settings.state_dir / "code")
    except NoImageError as exc:
        print(f"image: {pf.FAILED}: {exc}\n1 check(s) failed")
        return 1
    where = f"offline: {offline}" if offline else f"online, region {cfg.region}"
    print(f"preflight of pipeline {cfg.pipeline_name} (setup {args.setup}; {where})")
    checks = pf.preflight(cfg, built.parsed(), settings, offline)
    for check in checks:
        print(check.line())
    failed = sum(c.status == pf.FAILED for c in checks)
    print(f"{failed} check(s) failed" if failed else "preflight passed")
    return 0 if failed == 0 else 1


def _upsert(args: argparse.Namespace) -> int:
    from pipelines.aws import pipeline as aws

    settings = _settings(args)
    cfg = config_from_cli(args, settings)
    if not args.skip_preflight:
        from pipelines.aws.preflight import FAILED, definition_checks, definition_report
        from pipelines.definition.build import build_definition

        built = build_definition(cfg, staging_root=settings.state_dir / "code")
        report = definition_report(cfg, built.parsed())
        failures = [c.line() for c in definition_checks(report) if c.status == FAILED]
        if failures:
            print("\n".join(failures), file=sys.stderr)
            print(
                "upsert refused: the definition fails preflight (--skip-preflight to force)",
                file=sys.stderr,
            )
            return 1
    print(aws.upsert(cfg, settings))
    return 0


def _start(args: argparse.Namespace) -> int:
    from pipelines.aws import pipeline as aws
    from pipelines.cli.pipeline import requested_parameters
    from pipelines.definition.parameters import validate

    settings = load_settings()
    cfg = aws_from_settings(settings, champion_tolerance=args.champion_tolerance)
    overrides = validate(requested_parameters(args), cfg)
    status = overrides.get("ModelApprovalStatus", PENDING)
    if status != PENDING:
        raise ValueError(
            f"ModelApprovalStatus={status}: on AWS a run registers as {PENDING} (the stack's IAM "
            "refuses anything else); approve with `lepton model approve`, which deploys"
        )
    if "DataSnapshot" not in overrides:
        data = str(overrides.get("InputDataUri") or cfg.input_data_uri)
        overrides["DataSnapshot"] = aws.data_snapshot(data, settings)
        print(f"DataSnapshot={overrides['DataSnapshot']} (listing of {data})", file=sys.stderr)
    group = str(overrides.get("ModelPackageGroupName") or cfg.model_package_group)
    champion = aws.champion_accuracy(group, settings)
    name = args.pipeline_name or cfg.pipeline_name
    arn = aws.start(name, aws.start_parameters(cfg, champion, overrides), settings=settings)
    print(arn)
    if not args.wait:
        return 0
    final = aws.wait(arn, settings=settings, on_poll=lambda s: print(s, file=sys.stderr))
    record = aws.run_record(arn, settings=settings)
    print(f"{final}; run record {record.write(settings.state_dir)}")
    return 0 if final == "Succeeded" else 1


def _wait(args: argparse.Namespace) -> int:
    from pipelines.aws import pipeline as aws

    final = aws.wait(args.execution_arn, args.timeout, args.poll, settings=load_settings())
    print(final)
    return 0 if final == "Succeeded" else 1


def _status(args: argparse.Namespace) -> int:
    from pipelines.aws import pipeline as aws

    settings = load_settings()
    target = args.target or settings.pipeline_name or PipelineConfig.pipeline_name
    info = aws.status(target, settings=settings)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(
        f"{info['pipeline_name']}  {info['status'] or 'never run'}  {info['execution_arn'] or ''}"
    )
    if info["failure_reason"]:
        print(f"  failure: {info['failure_reason']}")
    for step in info["steps"]:
        extra = step["failure_reason"] or (
            f"cached from {step['cache_hit_from']}" if step["cache_hit_from"] else ""
        )
        print(f"  {step['name']:<14} {step['status'] or '-':<10} {extra}")
    return 0
