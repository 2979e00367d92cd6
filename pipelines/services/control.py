"""`lepton services up|down|status`: start, stop and inspect the local services.

`up` is idempotent, `down` stops only the processes recorded in pid files (and checks the pid
still belongs to that service), and data stays in the state folder across restarts. Both hold
the state folder's services lock, so concurrent calls never start a service twice. `up` keeps
the state folder private: 0700, the services' files 0600.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from pipelines.runner.fetch import socket_state
from pipelines.services.definitions import Service, managed_services
from pipelines.services.process import (
    Printer,
    ServiceError,
    alive,
    http_ok,
    log_dir,
    log_path,
    pid_path,
    port_free,
    run_dir,
    running_pid,
    services_lock,
    start_process,
    stop,
    terminate,
)
from pipelines.settings import Settings, private_dir, restrict_tree

ENDPOINT_SERVICE = "endpoint"  # pid/log name of the local endpoint (pipelines.deploy.local)
ENDPOINT_MARKER = "inference"  # must appear in the endpoint's command line (pid reuse guard)


def _wait_healthy(service: Service, settings: Settings, pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.health():
            return
        if not alive(pid):
            raise ServiceError(
                f"{service.name} exited during start-up; see {log_path(settings, service.name)}"
            )
        time.sleep(0.5)
    raise ServiceError(
        f"{service.name} did not become healthy within {timeout_s:.0f} s on {service.url}; "
        f"see {log_path(settings, service.name)}"
    )


def up(
    settings: Settings,
    timeout_s: float = 90.0,
    out: Printer = print,
    background: Collection[str] = (),
    only: Collection[str] | None = None,
) -> dict[str, Callable[[], None]]:
    """Start every managed service that is not running; wait for health; create buckets.

    Services named in ``background`` are started but not waited for: the result maps each to
    a function that waits for its health (once; later calls return at once) and raises
    ServiceError as ``up`` would. `lepton pipeline run` starts MLflow (12 s of imports) that
    way and waits for it only before the first step that tracks. ``only`` names the services
    to start (default: all).
    """
    if settings.mode != "local":
        raise ServiceError("services run only in local mode (LEPTON_MODE=local)")
    private_dir(settings.state_dir)
    waiters: dict[str, Callable[[], None]] = {}
    with services_lock(settings):
        services = managed_services(settings)  # creates credentials and keys on first use
        services = [s for s in services if only is None or s.name in only]
        _make_private(settings, services)
        for service in services:
            pid = _start_one(settings, service, out)
            if service.name in background:
                waiters[service.name] = _waiter(settings, service, pid, timeout_s, out)
            else:
                _ready_one(settings, service, pid, timeout_s, out)
    return waiters


def _waiter(
    settings: Settings, service: Service, pid: int, timeout_s: float, out: Printer
) -> Callable[[], None]:
    """Waits for the service's health the first time it is called; then returns at once."""
    done = False

    def wait_once() -> None:
        nonlocal done
        if not done:
            _ready_one(settings, service, pid, timeout_s, out)
            done = True

    return wait_once


def _make_private(settings: Settings, services: list[Service]) -> None:
    """Folders 0700 and files 0600 for what the services keep (earlier versions left them
    0755/0644; SeaweedFS itself makes its .vif files 0644, the 0700 folders keep them private)."""
    for folder in (run_dir(settings), log_dir(settings), *(p for s in services for p in s.data)):
        restrict_tree(private_dir(folder))
    restrict_tree(settings.credentials_path)


def _start_one(settings: Settings, service: Service, out: Printer) -> int:
    """The service's pid: the running one, or a process started now."""
    pid = running_pid(settings, service.name, service.marker)
    if pid is not None:
        out(f"{service.name}: already running (pid {pid}) on {service.url}")
        return pid
    if not port_free(settings.host, service.port):
        raise ServiceError(
            f"{service.name}: port {service.port} on {settings.host} is taken by another "
            f"process; stop it or choose another port ({service.port_variable})"
        )
    pid = start_process(settings, service.name, service.command, service.env, service.cwd)
    note = f", {service.note}" if service.note else ""
    out(f"{service.name}: starting (pid {pid}){note}, log {log_path(settings, service.name)}")
    return pid


def _ready_one(
    settings: Settings, service: Service, pid: int, timeout_s: float, out: Printer
) -> None:
    """Wait for health (a service that does not come up is stopped); S3 gets its buckets."""
    try:
        _wait_healthy(service, settings, pid, timeout_s)
    except ServiceError:
        terminate(pid)
        pid_path(settings, service.name).unlink(missing_ok=True)
        raise
    if service.name == "s3":
        from pipelines.storage import ensure_buckets

        ensure_buckets(settings)
    out(f"{service.name}: healthy at {service.url}")


def down(settings: Settings, out: Printer = print) -> None:
    """Stop the endpoint (if deployed) and every managed service, newest first; keep all data."""
    with services_lock(settings):
        stopped = [stop(settings, ENDPOINT_SERVICE, ENDPOINT_MARKER, out)]
        for service in reversed(managed_services(settings)):
            stopped.append(stop(settings, service.name, service.marker, out))
            _remove_leftovers(service)
    if not any(stopped):
        out("nothing was running")


def _remove_leftovers(service: Service, settle_s: float = 5.0) -> None:
    """Unix sockets a stopped service left behind in /tmp: removed where they are this user's
    and nothing answers on them (another stack may have taken the port since). One that still
    answers gets up to `settle_s` to go quiet: after heavy use, a stopped `weed`'s socket
    still took connections for a moment after `stop` had returned, with `weed` already a
    zombie (one thread, reparented to pid 1) and no listener on it in `ss -xlp`. Waiting in
    `stop` for zombies' threads instead was tried and still left the socket, 1 run in 2."""
    deadline = time.monotonic() + settle_s
    for path in service.leftovers:
        state = socket_state(str(path))
        while state == "live" and time.monotonic() < deadline:
            time.sleep(0.1)
            state = socket_state(str(path))
        if state == "dead":
            with contextlib.suppress(OSError):
                path.unlink()


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    pid: int | None
    healthy: bool


def status(settings: Settings) -> list[ServiceStatus]:
    rows = []
    for service in managed_services(settings):
        pid = running_pid(settings, service.name, service.marker)
        rows.append(ServiceStatus(service.name, service.url, pid, service.health()))
    endpoint_pid = running_pid(settings, ENDPOINT_SERVICE, ENDPOINT_MARKER)
    if endpoint_pid is not None:
        healthy = http_ok(settings.endpoint_url + "/ping")
        rows.append(ServiceStatus("endpoint", settings.endpoint_url, endpoint_pid, healthy))
    return rows
