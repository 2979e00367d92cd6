"""Supervise background processes: start with a pid file and log, find, health-check, stop.

Used by the local services (SeaweedFS, MLflow) and the local endpoint. A pid file names a
process only while that process is alive, started when the file says and its command line
still holds the service's marker: the file holds the pid and the process's start time, since
pids are reused (they often wrap at 32768) and the markers are generic words. Pid files
are replaced atomically, and `services_lock` serialises whoever checks and starts services,
so two `services up` at once start each service once. Children run with umask 077: what they
create in the state folder is theirs alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from pipelines.settings import Settings, private_dir, write_private

Printer = Callable[[str], None]


class ServiceError(RuntimeError):
    """A service could not be started or stopped; the message says why and where to look."""


def console_script(name: str) -> str:
    """A console script of this environment (the venv's bin folder first, then PATH)."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"'{name}' not found: run `make setup` (it installs {name})")
    return found


def run_dir(settings: Settings) -> Path:
    return settings.state_dir / "run"


def log_dir(settings: Settings) -> Path:
    return settings.state_dir / "logs"


def pid_path(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.pid"


def log_path(settings: Settings, name: str) -> Path:
    return log_dir(settings) / f"{name}.log"


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when `url` answers 2xx within `timeout_s` (the one HTTP health probe)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def record_pid(settings: Settings, name: str, pid: int) -> None:
    """Write `name`'s pid file: the pid and the start time of its process, so that the pid,
    once the system gives it to another process, no longer names this service."""
    started = psutil.Process(pid).create_time()
    write_private(pid_path(settings, name), f"{pid} {started!r}".encode())


def running_pid(settings: Settings, name: str, marker: str | None = None) -> int | None:
    """The pid recorded for `name` if that process is alive and still ours, else None."""
    path = pid_path(settings, name)
    try:
        fields = path.read_text().split()
        pid = int(fields[0])
        started = float(fields[1]) if len(fields) > 1 else None  # None: an older pid file
    except (OSError, ValueError, IndexError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if started is not None and abs(proc.create_time() - started) > 1e-3:
            return None  # pid reused by a process started later
        if marker and marker not in " ".join(proc.cmdline()):
            return None  # pid reused by an unrelated process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return pid


@contextlib.contextmanager
def services_lock(settings: Settings) -> Iterator[None]:
    """Hold the state folder's services lock (blocking) for the duration of the block."""
    path = private_dir(run_dir(settings)) / "services.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes, even if this process dies
        yield
    finally:
        os.close(fd)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start_process(
    settings: Settings, name: str, command: list[str], env: dict[str, str], cwd: Path | None = None
) -> int:
    """Start a detached background process with a pid file and a log file; return its pid.

    Callers that must not start a process twice hold `services_lock` around the check and this.
    """
    private_dir(run_dir(settings))
    private_dir(log_dir(settings))
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    log = os.open(log_path(settings, name), flags, 0o600)
    full_env = {**os.environ, **env}
    try:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,  # outlives `make`, and our Ctrl+C does not reach it
            umask=0o077,  # its data, logs and sockets: owner only
        )
    finally:
        os.close(log)
    record_pid(settings, name, proc.pid)
    return proc.pid


def terminate(pid: int, grace_s: float = 15.0) -> None:
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
        os.killpg(pid, signal.SIGTERM)  # the whole session: MLflow runs uvicorn workers
    except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
        return
    _, alive = psutil.wait_procs([proc, *children], timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def stop(settings: Settings, name: str, marker: str | None = None, out: Printer = print) -> bool:
    """Stop one service recorded in a pid file. Returns whether something was stopped."""
    pid = running_pid(settings, name, marker)
    pid_path(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    terminate(pid)
    out(f"{name}: stopped (pid {pid})")
    return True


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
