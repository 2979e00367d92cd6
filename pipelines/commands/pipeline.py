"""`lepton pipeline run|resume|list|definition|upsert|start|wait|status`."""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.settings import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pipeline", help="run the pipeline locally, or define and run it on SageMaker"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    run = actions.add_parser(
        "run", help="run the whole pipeline locally (starts services, imports mnist-5k if needed)"
    )
    run.add_argument("--data", help="s3:// prefix of raw images (default: the imported mnist-5k)")
    run.add_argument("--epochs", type=int, help="training epochs")
    run.add_argument("--nproc", type=int, default=2, help="training processes (torchrun) [2]")
    run.add_argument("--accuracy-threshold", type=float, help="gate: minimum test accuracy")
    run.add_argument(
        "--manual-approval",
        action="store_true",
        help="register as PendingManualApproval instead of approving a model that passes the gate",
    )
    run.add_argument("--import-limit", type=int, help="import only this many images on first run")
    run.add_argument("--no-cache", action="store_true", help="run every step even if cached")
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set any pipeline parameter (repeatable)",
    )
    run.set_defaults(func=_run)

    resume = actions.add_parser(
        "resume", help="re-run only the failed or unfinished steps of an execution"
    )
    resume.add_argument("execution", help="execution id (see `lepton pipeline list`)")
    resume.set_defaults(func=_resume)

    listing = actions.add_parser("list", help="local executions, newest last")
    listing.set_defaults(func=_list)

    definition = actions.add_parser(
        "definition", help="print the SageMaker pipeline definition JSON (offline)"
    )
    definition.add_argument("--output", "-o", help="write to this file instead of stdout")
    definition.set_defaults(func=_definition)

    try:
        from pipelines.commands import pipeline_aws
    except ImportError:  # pragma: no cover - only while the AWS module is absent
        return
    pipeline_aws.register(actions)


def _params(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param takes NAME=VALUE, got {pair!r}")
        out.append((name, value))
    return tuple(out)


def _run(args: argparse.Namespace) -> int:
    from pipelines.local_run import RunRequest, run

    request = RunRequest(
        data=args.data,
        epochs=args.epochs,
        nproc=args.nproc,
        accuracy_threshold=args.accuracy_threshold,
        manual_approval=args.manual_approval,
        import_limit=args.import_limit,
        use_cache=not args.no_cache,
        extra_parameters=_params(args.param),
    )
    summary = run(load_settings(), request)
    return 0 if summary["status"] == "Succeeded" else 1


def _resume(args: argparse.Namespace) -> int:
    from pipelines.local_run import resume

    summary = resume(load_settings(), args.execution)
    return 0 if summary["status"] == "Succeeded" else 1


def _list(args: argparse.Namespace) -> int:
    from pipelines.runner.state import Execution, list_ids

    settings = load_settings()
    for exec_id in list_ids(settings.state_dir):
        ex = Execution.load(settings.state_dir, exec_id)
        steps = " ".join(f"{n}:{r.status}" for n, r in ex.steps.items())
        print(f"{ex.id}  {ex.status:<10} {steps}")
    return 0


def _definition(args: argparse.Namespace) -> int:
    from pipelines.local_run import RunRequest, build_definition, local_config

    settings = load_settings()
    text = json.dumps(build_definition(settings, local_config(settings, RunRequest())), indent=2)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0
