"""`lepton infra validate|deploy|outputs`: the CloudFormation stack in infra/template.yaml."""

from __future__ import annotations

import argparse
import json

from pipelines.settings import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    from pipelines.aws.stack import TEMPLATE_PATH

    parser = sub.add_parser("infra", help="validate, deploy and read the AWS CloudFormation stack")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    validate = actions.add_parser("validate", help="cfn-lint the template")
    validate.add_argument("--template", default=str(TEMPLATE_PATH))
    validate.set_defaults(func=_validate)
    deploy = actions.add_parser("deploy", help="create or update the stack and wait")
    deploy.add_argument("--stack", default="lepton")
    deploy.add_argument("--template", default=str(TEMPLATE_PATH))
    deploy.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE")
    deploy.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    deploy.add_argument("--no-wait", action="store_true")
    deploy.set_defaults(func=_deploy)
    outputs = actions.add_parser(
        "outputs", help="the stack's outputs (json, or env lines for the CLI)"
    )
    outputs.add_argument("--stack", default="lepton")
    outputs.add_argument("--format", choices=("json", "env"), default="json")
    outputs.set_defaults(func=_outputs)


def _validate(args: argparse.Namespace) -> int:
    from pipelines.aws.stack import validate_template

    findings = validate_template(args.template)
    for line in findings:
        print(line)
    print("template is clean" if not findings else f"{len(findings)} finding(s)")
    return 1 if findings else 0


def _deploy(args: argparse.Namespace) -> int:
    from pipelines.aws.clients import cloudformation_client
    from pipelines.aws.stack import deploy_stack
    from pipelines.cli.args import parse_pairs

    result = deploy_stack(
        args.stack,
        cloudformation_client(load_settings()),
        template_path=args.template,
        parameters=parse_pairs(args.parameter),
        tags=parse_pairs(args.tag),
        wait=not args.no_wait,
    )
    print(f"stack {result.stack_name}: {result.action}")
    print(json.dumps(result.outputs, indent=2))
    return 0


def _outputs(args: argparse.Namespace) -> int:
    from pipelines.aws.clients import cloudformation_client
    from pipelines.aws.stack import format_env, settings_env, stack_outputs

    outputs = stack_outputs(args.stack, cloudformation_client(load_settings()))
    print(
        json.dumps(outputs, indent=2)
        if args.format == "json"
        else format_env(settings_env(outputs))
    )
    return 0
