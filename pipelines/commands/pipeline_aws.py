"""`lepton pipeline upsert|start|wait|status` (and `definition --setup aws`): SageMaker.

`register(actions)` adds these actions to the `lepton pipeline` group (pipelines/commands/
pipeline.py); an action name that group already has (its local `definition`) is left alone, and
`aws-definition` is offered instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from pipelines import aws
from pipelines.config import (
    PipelineConfig,
    add_arguments,
    aws_default,
    config_from_namespace,
    local_default,
)
from pipelines.settings import Settings, load_settings

SETUPS: dict[str, Callable[[Settings], PipelineConfig]] = {
    "aws": lambda s: aws_default(role_arn=None, bucket=s.artifact_bucket, region=s.region),
    "local": local_default,
}


def register(actions: argparse._SubParsersAction) -> None:
    taken = set(actions.choices)
    name = "definition" if "definition" not in taken else "aws-definition"
    d = actions.add_parser(
        name,
        help="print the SageMaker pipeline definition JSON (offline, "
        "--setup aws|local and every config flag)",
    )
    _config_arguments(d)
    d.add_argument("--out", type=Path, help="write it to this file instead of stdout")
    d.set_defaults(func=_definition)
    u = actions.add_parser(
        "upsert",
        help="upload the code bundle and create/update the "
        "SageMaker pipeline (role/bucket: flags or --stack)",
    )
    _config_arguments(u)
    u.set_defaults(func=_upsert)
    s = actions.add_parser("start", help="start an execution on SageMaker")
    s.add_argument("--pipeline-name", default=PipelineConfig.pipeline_name)
    s.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="parameter override (repeatable)",
    )
    s.add_argument(
        "--model-package-group",
        default=None,
        help="group whose newest Approved package is the champion (default: LEPTON_MODEL_NAME)",
    )
    s.add_argument("--champion-tolerance", type=float, default=PipelineConfig.champion_tolerance)
    s.add_argument("--wait", action="store_true", help="then wait and print the final status")
    s.set_defaults(func=_start)
    w = actions.add_parser("wait", help="wait for a SageMaker execution to end")
    w.add_argument("execution_arn")
    w.add_argument("--timeout", type=float, default=6 * 3600, help="seconds")
    w.add_argument("--poll", type=float, default=30, help="seconds between polls")
    w.set_defaults(func=_wait)
    st = actions.add_parser(
        "status", help="a SageMaker execution's status (or a pipeline's latest), step by step"
    )
    st.add_argument(
        "target",
        nargs="?",
        default=PipelineConfig.pipeline_name,
        help="pipeline name or execution ARN",
    )
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--setup",
        choices=sorted(SETUPS),
        default="aws",
        help="named config to start from (default: aws)",
    )
    parser.add_argument(
        "--stack",
        help="take role, bucket and names from this CloudFormation "
        "stack's outputs (infra/template.yaml)",
    )
    add_arguments(parser)


def config_from_cli(args: argparse.Namespace, settings: Settings) -> PipelineConfig:
    """Named setup, then the stack's outputs, then explicit flags."""
    cfg = SETUPS[args.setup](settings)
    if getattr(args, "stack", None):
        cfg = aws.config_from_stack(cfg, aws.stack_outputs(args.stack, settings))
    return config_from_namespace(args, cfg)


def _definition(args: argparse.Namespace) -> int:
    from pipelines.definition import definition_json

    settings = load_settings()
    text = json.dumps(
        json.loads(definition_json(config_from_cli(args, settings), settings)), indent=2
    )
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


def _upsert(args: argparse.Namespace) -> int:
    settings = load_settings()
    print(aws.upsert(config_from_cli(args, settings), settings))
    return 0


def _start(args: argparse.Namespace) -> int:
    settings = load_settings()
    overrides: dict[str, object] = {}
    for pair in args.param:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param takes NAME=VALUE, got {pair!r}")
        overrides[key] = value
    group = str(
        overrides.get("ModelPackageGroupName")
        or args.model_package_group
        or settings.registered_model_name
    )
    champion = aws.champion_accuracy(group, settings)
    cfg = PipelineConfig(champion_tolerance=args.champion_tolerance)
    arn = aws.start(
        args.pipeline_name, aws.start_parameters(cfg, champion, overrides), settings=settings
    )
    print(arn)
    if not args.wait:
        return 0
    final = aws.wait(arn, settings=settings, on_poll=lambda s: print(s, file=sys.stderr))
    print(final)
    return 0 if final == "Succeeded" else 1


def _wait(args: argparse.Namespace) -> int:
    final = aws.wait(args.execution_arn, args.timeout, args.poll, settings=load_settings())
    print(final)
    return 0 if final == "Succeeded" else 1


def _status(args: argparse.Namespace) -> int:
    info = aws.status(args.target, settings=load_settings())
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
