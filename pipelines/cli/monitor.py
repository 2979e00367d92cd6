"""`lepton monitor run [--endpoint NAME] [--since 1h]`: captured traffic against the baseline."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipelines.aws.monitor import HOURLY, INSTANCE_TYPE
from pipelines.settings import Settings, load_settings

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 1h or 2d, got {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def register(sub: argparse._SubParsersAction) -> None:
    from pipelines.monitor.core import MonitorConfig
    from training.serialize import add_config_options

    monitor = sub.add_parser("monitor", help="drift monitoring of an endpoint's captured traffic")
    actions = monitor.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser(
        "run",
        help="compare the traffic captured in a window with the model's baseline",
        description="Reads the endpoint's data capture (SageMaker's layout) for the window, "
        "compares image and answer statistics with the deployed model's baseline (written by "
        "Evaluate) and writes constraint_violations.json, monitoring_summary.json and "
        "distributions.png. Status: no_violations, violations or not_enough_data.",
    )
    p.add_argument(
        "--endpoint", help="endpoint name (default: LEPTON_ENDPOINT_NAME or lepton-classifier)"
    )
    p.add_argument("--since", type=duration, default=timedelta(hours=1), help="window length [1h]")
    p.add_argument("--until", help="window end, ISO time (default: now)")
    p.add_argument("--capture", help="capture root (default: s3://ARTIFACT_BUCKET/capture)")
    p.add_argument(
        "--baseline", help="baseline.json (s3:// or path; default: the deployed model's)"
    )
    p.add_argument(
        "--out", type=Path, help="report folder (default: .lepton/monitor/<endpoint>/<time>)"
    )
    p.add_argument(
        "--fail-on-violation", action="store_true", help="exit 3 when a statistic drifts"
    )
    add_config_options(p, MonitorConfig)
    p.set_defaults(func=_run)
    s = actions.add_parser(
        "schedule",
        help="AWS: run the same check hourly as a SageMaker Model Monitor schedule",
        description="Creates (or replaces) a monitoring schedule on the endpoint: Model Monitor "
        "runs the project image on each window of captured data (the endpoint needs data "
        "capture: the stack's CapturePercent parameter) against the newest Approved package's "
        "baseline; reports go to s3://ARTIFACT_BUCKET/monitoring/<endpoint>/.",
    )
    s.add_argument("--endpoint", help="endpoint name (default: LEPTON_ENDPOINT_NAME)")
    s.add_argument("--cron", default=HOURLY, help="schedule expression [hourly]")
    s.add_argument("--baseline", help="baseline.json s3:// URI (default: the package's)")
    s.add_argument("--instance-type", default=INSTANCE_TYPE)
    add_config_options(s, MonitorConfig)
    s.set_defaults(func=_schedule)


def deployed_baseline(settings: Settings) -> str:
    """The baseline of the model the local endpoint serves (its registry version's tag)."""
    from pipelines.deploy.local import deployed_info
    from pipelines.register import registry

    info = deployed_info(settings)
    if info is None:
        raise RuntimeError("no local endpoint is running: pass --baseline, or deploy a model")
    owner = settings.with_overrides(registered_model_name=info["name"])
    for row in registry.list_versions(owner):
        if row.version == str(info["version"]) and row.tags.get("baseline_uri"):
            return row.tags["baseline_uri"]
    raise RuntimeError(
        f"{info['uri']} has no baseline (registered before Evaluate wrote baseline.json): "
        "pass --baseline"
    )


def package_baseline(settings: Settings) -> str:
    """On AWS: the data-quality statistics of the group's newest Approved package."""
    from pipelines.aws.clients import sagemaker_client
    from pipelines.register.sagemaker import latest_approved

    sm = sagemaker_client(settings)
    arn = latest_approved(sm, settings.registered_model_name)
    if arn is None:
        raise RuntimeError(
            f"no Approved package in {settings.registered_model_name}: pass --baseline"
        )
    metrics = sm.describe_model_package(ModelPackageName=arn).get("ModelMetrics", {})
    uri = metrics.get("ModelDataQuality", {}).get("Statistics", {}).get("S3Uri")
    if not uri:
        raise RuntimeError(f"{arn} has no ModelDataQuality statistics: pass --baseline")
    return str(uri)


def _run(args: argparse.Namespace) -> int:
    from inference.capture import VARIANT
    from pipelines.monitor.core import VIOLATIONS, MonitorConfig, check, summary_lines
    from pipelines.monitor.source import load_baseline, read_window
    from pipelines.monitor.step import parse_time
    from pipelines.storage import s3_client
    from training.serialize import config_from_namespace

    settings = load_settings()
    cfg = config_from_namespace(MonitorConfig, args)
    endpoint = args.endpoint or settings.endpoint_name or "lepton-classifier"
    try:
        end = parse_time(args.until) or datetime.now(UTC)
    except ValueError:
        raise SystemExit(f"--until: not an ISO time: {args.until!r}") from None
    start = end - args.since
    s3 = s3_client(settings)
    if args.baseline:
        baseline_uri = args.baseline
    elif settings.mode == "aws":
        baseline_uri = package_baseline(settings)
    else:
        baseline_uri = deployed_baseline(settings)
    baseline = load_baseline(baseline_uri, s3)
    root = args.capture or settings.capture_uri
    stamp = f"{end:%Y%m%dT%H%M%SZ}"
    out = args.out or settings.state_dir / "monitor" / endpoint / stamp
    print(
        f"monitor: {endpoint} {start:%Y-%m-%d %H:%M} .. {end:%H:%M} UTC, capture {root}, baseline {baseline_uri}"
    )
    events = read_window(root, endpoint, VARIANT, start, end, s3)
    window = {"start": start.isoformat(), "end": end.isoformat(), "baseline": baseline_uri}
    result = check(baseline, events, cfg, out, window)
    print("\n".join(summary_lines(result)))
    for violation in result.violations:
        print(f"  {violation['description']}")
    print(f"report: {out}")
    return 3 if args.fail_on_violation and result.status == VIOLATIONS else 0


def _schedule(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from botocore.exceptions import ClientError

    from pipelines.aws.clients import sagemaker_client
    from pipelines.aws.monitor import schedule_request
    from pipelines.cli.pipeline_aws import with_recorded_image
    from pipelines.definition.bundle import code_bundle_uri
    from pipelines.definition.config import aws_from_settings
    from pipelines.monitor.core import MonitorConfig
    from pipelines.runner.run import build_definition
    from training.serialize import config_from_namespace

    settings = load_settings()
    cfg = with_recorded_image(aws_from_settings(settings), settings)
    if not cfg.role_arn or not cfg.image_uri:
        raise RuntimeError(
            "needs the stack's role and the project image (`lepton infra outputs "
            "--format env`, `lepton image build`)"
        )
    endpoint = args.endpoint or cfg.endpoint_name
    definition = build_definition(settings, cfg)  # its code bundle uploaded
    thresholds = asdict(config_from_namespace(MonitorConfig, args))
    request = schedule_request(
        name=f"{endpoint}-drift",
        endpoint=endpoint,
        image_uri=cfg.image_uri,
        role_arn=cfg.role_arn,
        code_uri=code_bundle_uri(definition),
        baseline_uri=args.baseline or package_baseline(settings),
        output_uri=f"s3://{settings.artifact_bucket}/monitoring/{endpoint}",
        instance_type=args.instance_type,
        cron=args.cron,
        thresholds=thresholds,
    )
    sm = sagemaker_client(settings)
    try:
        sm.create_monitoring_schedule(**request)
        print(f"created monitoring schedule {request['MonitoringScheduleName']} ({args.cron})")
    except ClientError as exc:
        if "already exists" not in str(exc).lower():
            raise
        sm.update_monitoring_schedule(**request)
        print(f"updated monitoring schedule {request['MonitoringScheduleName']} ({args.cron})")
    return 0
