"""`lepton services up|down|status`."""

from __future__ import annotations

import argparse

from pipelines.services import control as services
from pipelines.settings import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "services", help="start, stop and inspect the local S3 and MLflow services"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start SeaweedFS (S3) and MLflow; idempotent")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for health")
    up.set_defaults(func=_up)
    down = actions.add_parser("down", help="stop what `up` started (and the endpoint); keeps data")
    down.set_defaults(func=_down)
    status = actions.add_parser("status", help="show each service, its URL and health")
    status.set_defaults(func=_status)


def _up(args: argparse.Namespace) -> int:
    settings = load_settings()
    services.up(settings, timeout_s=args.timeout)
    print(f"state folder: {settings.state_dir}")
    return 0


def _down(args: argparse.Namespace) -> int:
    services.down(load_settings())
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = load_settings()
    rows = services.status(settings)
    print(f"{'service':<10} {'health':<10} {'pid':<8} url")
    for row in rows:
        health = "healthy" if row.healthy else ("unhealthy" if row.pid else "stopped")
        print(f"{row.name:<10} {health:<10} {row.pid or '-'!s:<8} {row.url}")
    creds = settings.credentials()
    if creds is not None:
        print(f"s3 access key: {creds!r} (secret in {settings.credentials_path}, mode 0600)")
    print(f"state folder: {settings.state_dir}")
    return 0 if all(r.healthy for r in rows) else 3
