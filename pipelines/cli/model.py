"""`lepton model list|approve VERSION|reject VERSION [--no-deploy]`."""

from __future__ import annotations

import argparse

from pipelines.settings import Settings, load_settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("model", help="list, approve and reject registered model versions")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="versions with aliases, approval status, accuracy")
    _model_option(listing)
    listing.set_defaults(func=_list)
    for name, func, text in (
        ("approve", _approve, "mark Approved, move the champion alias and (re)deploy"),
        ("reject", _reject, "mark Rejected (never deployed); a rejected champion loses its alias"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("version", help="MLflow model version number")
        _model_option(action)
        action.add_argument(
            "--no-deploy",
            action="store_true",
            help="change the registry only; leave the endpoint alone",
        )
        action.set_defaults(func=func)


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="registered model name (default: LEPTON_MODEL_NAME, else the last run's model)",
    )


def model_settings(args: argparse.Namespace) -> Settings:
    """Settings naming the registered model these commands act on."""
    from pipelines.runner.record import RunRecord

    settings = load_settings()
    name = args.model
    if not name and not settings.model_name_given:
        last = RunRecord.read(settings.state_dir)
        name = last.model_name if last is not None and last.where == "local" else None
    return settings.with_overrides(registered_model_name=name) if name else settings


def _package_arn(settings: Settings, version: str) -> str | None:
    """The SageMaker model package registered beside this MLflow version (AWS mode)."""
    from pipelines.register import registry

    if settings.mode != "aws":
        return None
    for row in registry.list_versions(settings):
        if row.version == str(version):
            return row.tags.get("model_package_arn") or None
    return None


def _set_package_status(settings: Settings, version: str, status: str) -> str | None:
    arn = _package_arn(settings, version)
    if arn is None:
        if settings.mode == "aws":
            print(f"version {version} has no model_package_arn tag: SageMaker status unchanged")
        return None
    from pipelines.aws.clients import sagemaker_client
    from pipelines.register import sagemaker as sagemaker_registry

    sagemaker_registry.set_approval(sagemaker_client(settings), arn, status)
    print(f"SageMaker model package {arn}: {status}")
    return arn


def _list(args: argparse.Namespace) -> int:
    from pipelines.deploy.local import deployed_info
    from pipelines.register import registry

    settings = model_settings(args)
    rows = registry.list_versions(settings)
    if not rows:
        print(f"no versions of {settings.registered_model_name} registered yet")
        return 0
    deployed = (deployed_info(settings) or {}) if settings.mode == "local" else {}
    print(f"{settings.registered_model_name} ({settings.tracking_uri})")
    print(f"{'version':<8} {'status':<22} {'accuracy':<9} {'aliases':<22} {'created (UTC)':<20}")
    for row in rows:
        aliases = ",".join(row.aliases)
        if deployed.get("version") == row.version:
            aliases = (aliases + ",deployed").lstrip(",")
        accuracy = f"{row.accuracy:.4f}" if row.accuracy is not None else "-"
        created = row.created.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{row.version:<8} {row.approval_status:<22} {accuracy:<9} {aliases or '-':<22} "
            f"{created:<20}"
        )
    return 0


def _approve(args: argparse.Namespace) -> int:
    from pipelines.register import registry

    settings = model_settings(args)
    ref = registry.approve(settings, args.version)
    print(f"{ref.uri}: Approved; alias {registry.CHAMPION} -> version {ref.version}")
    arn = _set_package_status(settings, ref.version, registry.APPROVED)
    if args.no_deploy:
        return 0
    if settings.mode == "local":
        from pipelines.deploy.local import deploy_local

        deploy_local(settings, ref.uri, out=print)
    elif arn:
        # On AWS the approval is the deployment: the stack's approval rule runs its
        # DeployFunction (approving needs the stack's ModelApproverPolicy).
        print("the stack's approval rule deploys it to the endpoint")
    return 0


def _reject(args: argparse.Namespace) -> int:
    from pipelines.register import registry

    settings = model_settings(args)
    ref = registry.reject(settings, args.version)
    print(f"{ref.uri}: Rejected (never deployed)")
    _set_package_status(settings, ref.version, registry.REJECTED)
    if args.no_deploy or settings.mode != "local":
        return 0
    from pipelines.deploy.local import deploy_local, deployed_info, stop_local_endpoint

    if (deployed_info(settings) or {}).get("version") != ref.version:
        return 0
    # The endpoint serves the model just rejected: fall back to the champion, or stop serving.
    champion = registry.champion(settings)
    if champion is not None:
        print(f"the endpoint served version {ref.version}; redeploying champion {champion.uri}")
        deploy_local(settings, champion.uri, out=print)
    else:
        print(f"the endpoint served version {ref.version} and there is no champion; stopping it")
        stop_local_endpoint(settings, out=print)
    return 0
