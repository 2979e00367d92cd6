"""Run a job's processes (one per emulated host) with their output logged and progress echoed.

Every process gets its own session and asks the kernel to SIGTERM it when the runner dies (even
by SIGKILL), so no job outlives an interrupted run. When one host's process fails, the others
are stopped, as SageMaker stops a job's instances.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

Printer = Callable[[str], None]
PROGRESS = re.compile(
    r"(epoch|Epoch|images/s|quarantin|prepared|accuracy|deployed|endpoint|launch:)"
)
MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")
EXIT_SIGTERM = 143  # the training entry point's "stopped by SIGTERM, checkpoint saved"


class JobFailed(RuntimeError):
    """The job's process exited non-zero; the message names the log file and ends with its tail."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @property
    def interrupted(self) -> bool:
        """Stopped by SIGTERM (a spot interruption, a stop) after saving its state."""
        return self.exit_code in (EXIT_SIGTERM, -signal.SIGTERM)


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    label: str = ""  # prefix for echoed progress lines ("" for the first host)


def _die_with_parent() -> None:
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return "\n    ".join(text)


def run_commands(commands: Sequence[Command], echo: Printer) -> None:
    """Run the commands at once; return when all succeeded, raise JobFailed when one fails
    (after stopping the rest)."""
    procs: list[subprocess.Popen[str]] = []
    readers: list[threading.Thread] = []
    for cmd in commands:
        sink = open(cmd.log, "a", encoding="utf-8")  # noqa: SIM115 - closed by its reader
        sink.write(f"$ {' '.join(cmd.argv)}\n")
        sink.flush()
        proc = subprocess.Popen(
            cmd.argv,
            env=cmd.env,
            cwd=cmd.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            preexec_fn=_die_with_parent,
        )
        procs.append(proc)
        reader = threading.Thread(target=_pump, args=(proc, sink, cmd.label, echo), daemon=True)
        reader.start()
        readers.append(reader)
    try:
        failed = _wait_first_failure(procs)
    except BaseException:
        _stop(procs)
        raise
    if failed is not None:
        _stop(procs)
    for reader in readers:
        reader.join(timeout=30)
    if failed is not None:
        code = procs[failed].returncode
        log = commands[failed].log
        tail = _tail(log)
        missing = MISSING_MODULE.findall(tail)
        lead = (
            f"the step environment has no module {missing[-1]!r} (is its distribution in "
            "infra/image/requirements.txt?); "
            if missing
            else ""
        )
        raise JobFailed(f"{lead}exited with code {code}; log {log}\n    {tail}", code)


def _pump(proc: subprocess.Popen[str], sink: TextIO, label: str, echo: Printer) -> None:
    assert proc.stdout is not None
    with sink:
        for line in proc.stdout:
            sink.write(line)
            if PROGRESS.search(line):
                echo((f"{label}: " if label else "") + line.rstrip()[:160])


def _wait_first_failure(procs: list[subprocess.Popen[str]]) -> int | None:
    """Index of the first process to fail, or None once all exited 0."""
    pending = set(range(len(procs)))
    while pending:
        for i in sorted(pending):
            try:
                code = procs[i].wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
            pending.discard(i)
            if code != 0:
                return i
    return None


def _stop(procs: list[subprocess.Popen[str]], grace_s: float = 30.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
