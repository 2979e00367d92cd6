"""`lepton pipeline run|resume|list|definition|parameters|summary` (local), and the SageMaker
actions of pipelines/cli/pipeline_aws.py."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from pipelines.settings import load_settings

if TYPE_CHECKING:
    from pipelines.definition.config import PipelineConfig


def register(sub: argparse._SubParsersAction) -> None:
    from pipelines.cli import pipeline_aws
    from pipelines.cli.args import add_param_option
    from pipelines.definition.parameters import add_parameter_flags

    parser = sub.add_parser(
        "pipeline", help="run the pipeline locally, or define and run it on SageMaker"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    run = actions.add_parser(
        "run",
        help="run the whole pipeline locally (starts services, imports mnist-5k if needed)",
        description="Every pipeline parameter has a flag; --param NAME=VALUE sets one by name.",
    )
    add_parameter_flags(run, _local_defaults())
    add_param_option(run)
    run.add_argument(
        "--manual-approval",
        action="store_true",
        help="register as PendingManualApproval instead of approving a model that passes the gate",
    )
    run.add_argument("--import-limit", type=int, help="import only this many images on first run")
    data = run.add_argument_group("data settings (default: chosen from the data, see the README)")
    data.add_argument("--image-size", metavar="H,W", help="resize to H,W (or N) pixels")
    data.add_argument("--channels", choices=("1", "3"), help="1 grayscale, 3 RGB")
    data.add_argument("--train-setup", metavar="NAME", help="a training/config.py named setup")
    data.add_argument("--dataset-name", metavar="NAME", help="default: the input prefix's name")
    run.add_argument("--no-cache", action="store_true", help="run every step even if cached")
    run.set_defaults(func=_run)

    resume = actions.add_parser(
        "resume", help="re-run only the failed or unfinished steps of an execution"
    )
    resume.add_argument("execution", help="execution id (see `lepton pipeline list`)")
    resume.set_defaults(func=_resume)

    listing = actions.add_parser("list", help="local executions, newest last")
    listing.set_defaults(func=_list)

    definition = actions.add_parser(
        "definition", help="print the local pipeline definition JSON (offline)"
    )
    definition.add_argument("--output", "-o", help="write to this file instead of stdout")
    definition.set_defaults(func=_definition)

    params = actions.add_parser("parameters", help="the pipeline parameters and their defaults")
    params.add_argument("--markdown", action="store_true", help="as the README's table")
    params.set_defaults(func=_parameters, defaults=_local_defaults())

    env = actions.add_parser(
        "environment",
        help="build (once) and print the step environment: infra/image/requirements.txt alone",
    )
    env.set_defaults(func=_environment)

    summary = actions.add_parser("summary", help="the last run's record (.lepton/last-run.json)")
    summary.add_argument("--markdown", action="store_true", help="for a CI job summary")
    summary.add_argument("--title", default="Retraining", help="markdown heading")
    summary.set_defaults(func=_summary)

    pipeline_aws.register(actions)


def _local_defaults() -> PipelineConfig:
    from pipelines.runner.run import local_config

    return local_config(load_settings())


def requested_parameters(args: argparse.Namespace) -> dict[str, str]:
    """Parameters given as flags and as --param NAME=VALUE; the same one twice is an error."""
    from pipelines.cli.args import parse_pairs
    from pipelines.definition.parameters import BY_NAME, parameters_from_flags

    by_flag = parameters_from_flags(args)
    by_name = parse_pairs(args.param, "NAME=VALUE")
    both = sorted(set(by_flag) & set(by_name))
    if both:
        flags = ", ".join(f"{BY_NAME[name].flag} and --param {name}" for name in both)
        raise ValueError(f"parameter given twice: {flags}; give it once")
    return {**by_flag, **by_name}


def _run(args: argparse.Namespace) -> int:
    from pipelines.runner.run import RunRequest, run

    config = {
        name: getattr(args, name)
        for name in ("image_size", "channels", "train_setup", "dataset_name")
        if getattr(args, name) is not None
    }
    request = RunRequest(
        parameters=requested_parameters(args),
        manual_approval=args.manual_approval,
        import_limit=args.import_limit,
        use_cache=not args.no_cache,
        config=config,
    )
    record = run(load_settings(), request)
    return 0 if record.status == "Succeeded" else 1


def _resume(args: argparse.Namespace) -> int:
    from pipelines.runner.run import resume

    record = resume(load_settings(), args.execution)
    return 0 if record.status == "Succeeded" else 1


def _list(args: argparse.Namespace) -> int:
    from pipelines.runner.state import Execution, list_ids

    settings = load_settings()
    for exec_id in list_ids(settings.state_dir):
        ex = Execution.load(settings.state_dir, exec_id)
        steps = " ".join(f"{n}:{r.status}" for n, r in ex.steps.items())
        print(f"{ex.id}  {ex.status:<10} {steps}")
    return 0


def _definition(args: argparse.Namespace) -> int:
    from pipelines.runner.run import build_definition, local_config

    settings = load_settings()
    text = json.dumps(build_definition(settings, local_config(settings)), indent=2)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


def _parameters(args: argparse.Namespace) -> int:
    from pipelines.definition.parameters import PARAMETERS, markdown_table

    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    for p in PARAMETERS:
        print(f"{p.name:<26} {p.sdk_type:<8} {getattr(args.defaults, p.field)!s:<32} {p.help}")
    return 0


def _environment(args: argparse.Namespace) -> int:
    from pipelines.definition.names import IMAGE_REQUIREMENTS
    from pipelines.imports import SOURCE_ROOT
    from pipelines.runner.environment import ensure_environment

    python = ensure_environment(SOURCE_ROOT / IMAGE_REQUIREMENTS, load_settings().env_root)
    print(python)
    return 0


def _summary(args: argparse.Namespace) -> int:
    from pipelines.runner.record import RunRecord, missing_markdown

    record = RunRecord.read(load_settings().state_dir)
    if record is None:
        print(missing_markdown(args.title) if args.markdown else "no run record yet")
        return 0 if args.markdown else 1
    print(record.markdown(args.title) if args.markdown else "\n".join(record.text()))
    return 0
