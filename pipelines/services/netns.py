"""Run a service in a private network namespace with one TCP port forwarded into it.

SeaweedFS's `weed mini` opens a dozen ports besides S3 (master, volume, filer, admin, their
gRPC twins), and some answer without any key (status pages). Run inside a new user + network
namespace of its own, none of them is reachable from the host: the namespace has only its own
loopback. This launcher binds the one public port (S3) on the host *before* it leaves the host's
namespace (a socket stays in the namespace it was made in), then unshares, brings the private
loopback up, starts the service there on the same address and port, and forwards each accepted
connection to it: two threads per connection move the bytes with splice(2), kernel to kernel
(bench/s3_forward.py: 0.82-0.90x a direct connection's throughput for small S3 objects,
0.73-0.84x for large; an asyncio forwarder did 0.75x, and uvloop's crashed). It needs no
privileges, only unprivileged user namespaces (Linux); where those are refused (`available()`
is False: macOS, some hardened kernels) the caller runs the service directly.

    python -m pipelines.services.netns --host 127.0.0.1 --port 8333 -- weed mini ...

SIGTERM or SIGINT stops the service (which also dies with the launcher: PR_SET_PDEATHSIG), and
the launcher exits with the service's exit code (128 + n if signal n ended it). Which signal it
was and who sent it (pid and process name) go to stderr, the service's log: a stack stopped
by surprise says by whom.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import functools
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

from inference.quick_exit import quick_exit

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_SET_PDEATHSIG = 1
BACKLOG = 1024


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unshare() -> None:
    """Enter a new user + network namespace, mapped to the caller's own uid and gid."""
    uid, gid = os.getuid(), os.getgid()
    if _libc().unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(user, net): {os.strerror(err)}")
    for name, text in (("uid_map", f"0 {uid} 1"), ("setgroups", "deny"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


@functools.cache
def available() -> bool:
    """Whether this machine lets an unprivileged process make its own network namespace
    (tried in a child process, which leaves the caller as it was)."""
    if not sys.platform.startswith("linux"):
        return False
    check = [sys.executable, "-m", __name__, "--check"]
    return subprocess.run(check, capture_output=True, timeout=30).returncode == 0


def enter(pid: int) -> None:
    """Join the user and network namespaces of process `pid` (a launcher's). The caller must
    be single-threaded (a fresh fork or a `preexec_fn`), and is then inside for good."""
    for kind, flag in (("user", CLONE_NEWUSER), ("net", CLONE_NEWNET)):
        fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
        try:
            if _libc().setns(fd, flag) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({kind} of pid {pid}): {os.strerror(err)}")
        finally:
            os.close(fd)


PIPE_BYTES = 1 << 20  # the most one splice moves: the pipe's capacity, raised from 64 KiB
F_SETPIPE_SZ = 1031


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Move bytes from src to dst through a pipe with splice (kernel to kernel, no copies
    into Python) until src ends; then pass the end on."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # fewer splices for large bodies (Linux caps the size)
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_BYTES)
    try:
        while n := os.splice(src.fileno(), w, PIPE_BYTES):
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:  # reset by either side: end both directions
        with contextlib.suppress(OSError):
            src.shutdown(socket.SHUT_RDWR)
    finally:
        os.close(r)
        os.close(w)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _forward(client: socket.socket, target: tuple[str, int]) -> None:
    """One accepted connection, joined to a new one to the service until both directions end."""
    with client:
        try:
            upstream = socket.create_connection(target)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the service is not listening (yet): the client sees a closed socket
            return
        with upstream:
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()


def _accept(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return  # closed at shutdown
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_forward, args=(client, target), daemon=True).start()


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _in_child() -> None:
    """Before the service's exec: it dies with the launcher and takes signals as usual."""
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _sender(pid: int) -> str:
    """'pid N (name)' of a signal's sender; its name only, never its arguments."""
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return f"pid {pid} ({fh.read().strip()})"
    except OSError:
        return f"pid {pid} (gone)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.services.netns")
    parser.add_argument("--check", action="store_true", help="exit 0 if namespaces work here")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.check:
        _unshare()
        _loopback_up()
        return 0
    if args.host is None or args.port is None:
        parser.error("--host and --port are required")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    listener = socket.create_server((args.host, args.port), backlog=BACKLOG)
    _unshare()
    _loopback_up()
    # stop signals wait for the loop below (every thread inherits the mask; the child not)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    child = subprocess.Popen(command, preexec_fn=_in_child)  # noqa: PLW1509 (no threads yet)
    threading.Thread(target=_accept, args=(listener, (args.host, args.port)), daemon=True).start()
    while child.poll() is None:
        info = signal.sigtimedwait(STOP_SIGNALS, 0.2)
        if info is not None:
            name = signal.Signals(info.si_signo).name
            print(
                f"netns: {name} from {_sender(info.si_pid)}: stopping", file=sys.stderr, flush=True
            )
            break
    if child.poll() is None:
        child.terminate()
    code = child.wait()
    return 128 - code if code < 0 else code  # killed by signal n: 128 + n, as a shell says


if __name__ == "__main__":
    sys.exit(quick_exit(main()))
