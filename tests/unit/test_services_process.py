"""Pid files name a service only while its own process runs: a reused pid is never stopped."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipelines.services import process
from pipelines.settings import Settings, load_settings

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)", "weed"]  # "weed": the marker


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return load_settings({"LEPTON_STATE_DIR": str(tmp_path / "state")})


@pytest.fixture()
def other() -> Iterator[subprocess.Popen[bytes]]:
    """A live process with the marker in its command line that is not the service."""
    proc = subprocess.Popen(SLEEPER)
    yield proc
    proc.kill()
    proc.wait()


def test_a_started_process_is_found_and_stopped(settings: Settings) -> None:
    pid = process.start_process(settings, "s3", SLEEPER, env={})
    assert process.running_pid(settings, "s3", "weed") == pid
    assert process.running_pid(settings, "s3", "mlflow") is None  # another command line
    assert process.stop(settings, "s3", "weed", out=lambda _m: None)
    assert not process.alive(pid)
    assert process.running_pid(settings, "s3", "weed") is None


def test_a_reused_pid_is_not_the_service(
    settings: Settings, other: subprocess.Popen[bytes]
) -> None:
    """The recorded process died and the system gave its pid to another one whose command
    line also holds the marker (as another stack's SeaweedFS would): the start time tells
    them apart, and `stop` leaves the other process alone."""
    pid = process.start_process(settings, "s3", SLEEPER, env={})
    process.terminate(pid)
    started = psutil.Process(other.pid).create_time() - 5.0  # the service started earlier
    process.pid_path(settings, "s3").write_text(f"{other.pid} {started!r}")  # the reuse
    assert process.running_pid(settings, "s3", "weed") is None
    assert not process.stop(settings, "s3", "weed", out=lambda _m: None)
    assert other.poll() is None  # still running
    assert not process.pid_path(settings, "s3").exists()


def test_a_pid_file_without_a_start_time_is_still_read(
    settings: Settings, other: subprocess.Popen[bytes]
) -> None:
    """Pid files of earlier versions hold the pid alone: the marker check still applies."""
    path = process.pid_path(settings, "s3")
    path.parent.mkdir(parents=True)
    path.write_text(str(other.pid))
    assert process.running_pid(settings, "s3", "weed") == other.pid
    assert process.running_pid(settings, "s3", "mlflow") is None
    path.write_text("")
    assert process.running_pid(settings, "s3", "weed") is None


def test_down_removes_a_dead_socket_left_behind_but_not_a_live_one(tmp_path: Path) -> None:
    import socket

    from pipelines.services.control import _remove_leftovers
    from pipelines.services.definitions import Service

    dead, live = tmp_path / "dead.sock", tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(str(dead))  # closed without unlinking, as weed leaves it
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(live))
    listener.listen(1)
    try:
        service = Service("s3", 0, "", [], {}, "weed", lambda: True, leftovers=(dead, live))
        _remove_leftovers(service, settle_s=0.3)
        assert not dead.exists() and live.is_socket()
    finally:
        listener.close()


def test_down_waits_for_a_socket_its_stopped_service_still_holds(tmp_path: Path) -> None:
    """A stopped weed's socket can still take connections for a moment after `stop` returns:
    a socket that goes quiet within the settle time is removed too."""
    import socket
    import threading

    from pipelines.services.control import _remove_leftovers
    from pipelines.services.definitions import Service

    path = tmp_path / "closing.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(8)
    closer = threading.Timer(0.5, listener.close)
    closer.start()
    try:
        service = Service("s3", 0, "", [], {}, "weed", lambda: True, leftovers=(path,))
        _remove_leftovers(service, settle_s=10.0)
        assert not path.exists()
    finally:
        closer.cancel()
        listener.close()
