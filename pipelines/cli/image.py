"""`lepton image build|uri|requirements`: the one container image every step and the endpoint run."""

from __future__ import annotations

import argparse
import sys

from pipelines.settings import Settings, load_settings


def register(sub: argparse._SubParsersAction) -> None:
    from pipelines.aws.image_context import DEFAULT_FLAVOUR, FLAVOURS

    parser = sub.add_parser("image", help="build the pipeline's container image and find its URI")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="build infra/image/ in the stack's CodeBuild project (or a local engine) and record "
        "the URI; an unchanged context is not rebuilt",
    )
    build.add_argument("--flavour", choices=FLAVOURS, default=DEFAULT_FLAVOUR)
    build.add_argument("--stack", default="lepton", help="the stack that owns the repository")
    build.add_argument(
        "--docker", action="store_true", help="build with the local Docker engine, not CodeBuild"
    )
    build.add_argument("--timeout-minutes", type=float, default=90.0)
    build.add_argument("--poll-seconds", type=float, default=10.0)
    build.set_defaults(func=_build)
    uri = actions.add_parser(
        "uri", help="print the image URI (LEPTON_IMAGE_URI, else the SSM parameter's value)"
    )
    uri.add_argument("--stack", help="read the parameter's name from this stack's outputs")
    uri.set_defaults(func=_uri)
    requirements = actions.add_parser(
        "requirements",
        help="check infra/image/requirements.txt against the code's imports and constraints.txt",
    )
    requirements.add_argument("--write", action="store_true", help="regenerate the file")
    requirements.set_defaults(func=_requirements)


def _aws_settings() -> Settings:
    """These commands talk to AWS whatever LEPTON_MODE says (the local S3 holds no images)."""
    return load_settings().with_overrides(mode="aws")


def _stack_outputs(settings: Settings, stack: str) -> dict[str, str]:
    from pipelines.aws.clients import cloudformation_client
    from pipelines.aws.stack import stack_outputs

    return stack_outputs(stack, cloudformation_client(settings))


def _build(args: argparse.Namespace) -> int:
    from pipelines.aws.image import ImageClients, ImageStack, build_in_codebuild
    from pipelines.aws.image_context import load_context
    from pipelines.aws.image_docker import build_with_docker

    settings = _aws_settings()
    stack = ImageStack.from_outputs(_stack_outputs(settings, args.stack), args.stack)
    context = load_context()
    print(f"build context {context.digest} -> {stack.uri(context.tag(args.flavour))}", flush=True)
    clients = ImageClients.from_settings(settings)

    def echo(line: str) -> None:
        print(line, flush=True)

    if args.docker:
        result = build_with_docker(stack, context, args.flavour, clients, echo=echo)
    else:
        result = build_in_codebuild(
            stack,
            context,
            args.flavour,
            clients,
            echo=echo,
            poll_s=args.poll_seconds,
            timeout_s=args.timeout_minutes * 60,
        )
    print(result.uri)
    return 0


def _uri(args: argparse.Namespace) -> int:
    from pipelines.aws.image import resolve_image_uri

    settings = _aws_settings()
    if args.stack:
        parameter = _stack_outputs(settings, args.stack).get("ImageParameterName")
        if not parameter:
            print(f"stack {args.stack!r} has no ImageParameterName output", file=sys.stderr)
            return 1
        settings = settings.with_overrides(image_uri=None, image_parameter=parameter)
    if not (settings.image_uri or settings.image_parameter):
        print(
            "no image configured: set LEPTON_IMAGE_URI, or LEPTON_IMAGE_PARAMETER (`lepton infra "
            "outputs --format env` exports it), or pass --stack",
            file=sys.stderr,
        )
        return 1
    uri = resolve_image_uri(settings)
    if uri is None:
        print(
            f"no image recorded in {settings.image_parameter} yet: run `lepton image build`",
            file=sys.stderr,
        )
        return 1
    print(uri)
    return 0


def _requirements(args: argparse.Namespace) -> int:
    from pipelines.aws.image_lock import REQUIREMENTS_PATH, render_requirements, stale_requirements

    if args.write:
        REQUIREMENTS_PATH.write_text(render_requirements())
        print(f"wrote {REQUIREMENTS_PATH}")
        return 0
    problem = stale_requirements()
    if problem:
        print(f"{problem}: run `lepton image requirements --write`", file=sys.stderr)
        return 1
    print(f"{REQUIREMENTS_PATH} is up to date")
    return 0
