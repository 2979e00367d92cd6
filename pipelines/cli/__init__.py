"""`lepton`: the one console script. Each subcommand lives in its own small module under
`pipelines/cli/`; this file only wires them together."""

from __future__ import annotations

import argparse
import sys

from pipelines.cli import (
    batch,
    data,
    image,
    infra,
    model,
    monitor,
    pipeline,
    serve,
    services,
    train,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lepton",
        description=(
            "Image-classification training pipeline: local services, data preparation, "
            "DDP training, evaluation, registry and serving; the same pipeline on SageMaker."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (services, data, train, pipeline, model, serve, batch, monitor, infra, image):
        module.register(sub)
    return parser


def console_main() -> int | None:
    """The ``lepton`` console script: :func:`main`, then an exit without walking the heap
    (inference/quick_exit.py). In-process callers (tests) use ``main`` and keep a normal heap."""
    from inference.quick_exit import quick_exit

    return quick_exit(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from training.tracking import quiet_sagemaker_header_plugin

    quiet_sagemaker_header_plugin()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for users; LEPTON_DEBUG=1 shows the traceback
        from pipelines.settings import load_settings

        if load_settings().debug:
            raise
        print(f"lepton {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from inference.quick_exit import quick_exit

    sys.exit(quick_exit(main()))
