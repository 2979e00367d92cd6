"""Only S3 answers without keys: every other port of the running SeaweedFS refuses.

Where the machine allows it, SeaweedFS runs in a network namespace of its own and only S3 is
reachable from the host: `test_only_s3_listens_on_the_host` checks every other port is closed.
Behind that, its ports are closed by keys as well (defence in depth): those checks run inside
the namespace (`_inside`: a forked child that joins it), each refusal against the real stack,
and where SeaweedFS's own keys are what refuses, a positive control shows the same request
succeeding with them (a JWT signed with the generated key, the generated client certificate),
so the test proves the keys do the work.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import time
import tomllib
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from pipelines.services import netns
from pipelines.services.process import running_pid
from pipelines.services.seaweedfs_security import SECURITY_FILE, grpc_files, security_dir
from pipelines.settings import Settings
from pipelines.storage import s3_client

GRPC_OFFSET = 10000  # SeaweedFS: a component's gRPC port is its HTTP port + 10000
COMPONENTS = {"s3": 0, "master": 1, "volume": 2, "filer": 3, "admin": 4}  # HTTP port offsets
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


def _http(
    url: str, method: str = "GET", body: bytes | None = None, token: str | None = None
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _jwt(key: str, claims: dict[str, Any]) -> str:
    """An HS256 JWT, as SeaweedFS's master mints them for one file id."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = json.dumps({"alg": "HS256", "typ": "JWT"}).encode()
    signed = f"{b64(header)}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{b64(signature)}"


def _keys(settings: Settings) -> dict[str, Any]:
    return tomllib.loads((security_dir(settings) / SECURITY_FILE).read_text())["jwt"]


def _h2_answer(sock: socket.socket) -> bytes:
    """Send an HTTP/2 client preface (what any gRPC client sends first); return the reply."""
    try:
        sock.sendall(H2_PREFACE)
        return sock.recv(64)
    except OSError:  # closed, reset, or (TLS) the server's "certificate required" alert
        return b""


def _grpc_plaintext(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return _h2_answer(sock)


def _grpc_tls(port: int, settings: Settings, with_client_cert: bool) -> bytes:
    ca, cert, key = grpc_files(settings)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # SeaweedFS does not check host names; the CA is what counts
    ctx.set_alpn_protocols(["h2"])
    if with_client_cert:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            sock = ctx.wrap_socket(raw)
        except ssl.SSLError:  # refused during the handshake (TLS 1.2)
            return b""
        with sock:
            return _h2_answer(sock)


def _is_h2_settings(reply: bytes) -> bool:
    return len(reply) >= 9 and reply[3] == 0x04  # frame type SETTINGS: an HTTP/2 server spoke


def _inside(settings: Settings, probe: Callable[[], None]) -> None:
    """Run `probe` where SeaweedFS's own ports are reachable: in its network namespace when it
    has one (a forked child joins it), else here. A failure in the child fails the test."""
    if not settings.s3_isolation or not netns.available():
        probe()
        return
    launcher = running_pid(settings, "s3", "weed")
    assert launcher is not None
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        try:
            netns.enter(launcher)
            probe()
            report = b""
        except BaseException:
            report = traceback.format_exc().encode() or b"failed"
        os.write(write, report)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read()
    os.waitpid(child, 0)
    assert not report, report.decode()


@pytest.mark.skipif(not netns.available(), reason="no unprivileged network namespaces here")
def test_only_s3_listens_on_the_host(stack_settings: Settings) -> None:
    p = stack_settings.s3_port
    closed = [p + o for o in (*COMPONENTS.values(), 5, 6, 7) if o] + [
        p + o + GRPC_OFFSET for o in COMPONENTS.values()
    ]
    for port in closed:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((stack_settings.host, port), 5)
    # ...while inside the namespace the same ports are there (so the check above is not vacuous)
    _inside(
        stack_settings, lambda: socket.create_connection((stack_settings.host, p + 2), 5).close()
    )
    assert _http(f"{stack_settings.s3_endpoint_url}/")[0] == 403  # S3: forwarded, keys needed


@pytest.fixture(scope="module")
def stored_object(stack_settings: Settings) -> str:
    """Something in S3, so a listing or read that worked would show it."""
    key = f"security/{secrets.token_hex(4)}.txt"
    s3_client(stack_settings).put_object(
        Bucket=stack_settings.data_bucket, Key=key, Body=b"secret bytes"
    )
    return key


def test_s3_needs_credentials(stack_settings: Settings, stored_object: str) -> None:
    base = stack_settings.s3_endpoint_url
    status, _ = _http(f"{base}/{stack_settings.data_bucket}/{stored_object}")
    assert status == 403
    status, _ = _http(f"{base}/{stack_settings.data_bucket}/anon.txt", "PUT", b"x")
    assert status == 403


def test_filer_http_refuses_reads_and_writes(stack_settings: Settings, stored_object: str) -> None:
    filer = f"http://{stack_settings.host}:{stack_settings.s3_port + 3}"
    bucket = f"/buckets/{stack_settings.data_bucket}"

    def probe() -> None:
        for method, path, body in [
            ("GET", "/buckets/", None),
            ("GET", f"{bucket}/", None),
            ("GET", f"{bucket}/{stored_object}", None),
            ("POST", f"{bucket}/filer-write.txt", b"written without a key"),
            ("PUT", f"{bucket}/filer-write.txt", b"written without a key"),
            ("DELETE", f"{bucket}/{stored_object}", None),
        ]:
            status, reply = _http(filer + path, method, body)
            assert status >= 400, (method, path, status, reply[:200])
            assert stack_settings.data_bucket.encode() not in reply and b"secret" not in reply

    _inside(stack_settings, probe)
    listed = s3_client(stack_settings).list_objects_v2(
        Bucket=stack_settings.data_bucket, Prefix="security/"
    )
    assert stored_object in [o["Key"] for o in listed["Contents"]]  # nothing was deleted
    assert not any(o["Key"] == "filer-write.txt" for o in listed["Contents"])


def test_master_http_hands_out_nothing(stack_settings: Settings, stored_object: str) -> None:
    master = f"http://{stack_settings.host}:{stack_settings.s3_port + 1}"

    def probe() -> None:
        for method, path in [
            ("GET", "/dir/assign"),
            ("POST", "/dir/assign"),
            ("GET", "/dir/lookup?volumeId=1"),
            ("GET", "/dir/status"),
            ("GET", "/vol/status"),
            ("POST", "/vol/grow?count=1"),
            ("POST", "/vol/vacuum"),
            ("POST", f"/col/delete?collection={stack_settings.data_bucket}"),
            ("POST", "/submit"),
            ("GET", "/1,01637037d6"),
        ]:
            status, reply = _http(master + path, method, b"" if method == "POST" else None)
            assert status >= 400, (method, path, status, reply[:200])
            assert b'"fid"' not in reply and b"auth" not in reply.lower()
        # open inside the namespace (README "Local services"): the status page, topology only
        status, page = _http(master + "/")
        assert status == 200 and stored_object.encode() not in page and b"secret" not in page

    _inside(stack_settings, probe)


def test_volume_server_needs_a_jwt_per_file(stack_settings: Settings, stored_object: str) -> None:
    volume = f"http://{stack_settings.host}:{stack_settings.s3_port + 2}"

    def probe() -> None:
        status, body = _http(f"{volume}/status")  # open: disk and volume counts, no data
        assert status == 200 and stored_object.encode() not in body and b"secret" not in body
        volume_id = json.loads(body)["Volumes"][0]["Id"]
        fid = f"{volume_id},{secrets.token_hex(6)}{secrets.token_hex(4)}"
        url = f"{volume}/{fid}"
        assert _http(url, "POST", b"written without a key")[0] == 401
        assert _http(url)[0] == 401
        assert _http(url, "DELETE")[0] == 401

        # positive control: the same requests pass with tokens signed by the generated keys
        keys, exp = _keys(stack_settings), int(time.time()) + 60
        write = _jwt(keys["signing"]["key"], {"fid": fid, "exp": exp})
        read = _jwt(keys["signing"]["read"]["key"], {"fid": fid, "exp": exp})
        assert _http(url, "POST", b"written with the key", token=write)[0] == 201
        assert _http(url, token=read) == (200, b"written with the key")
        assert _http(url, "DELETE", token=write)[0] in (200, 202, 204)

    _inside(stack_settings, probe)


def test_admin_http_serves_no_ui_or_api(stack_settings: Settings) -> None:
    admin = f"http://{stack_settings.host}:{stack_settings.s3_port + 4}"

    def probe() -> None:
        for path in ("/", "/admin", "/object-store/buckets", "/api/s3/buckets", "/api/cluster"):
            status, reply = _http(admin + path)
            assert status == 404, (path, status, reply[:200])

    _inside(stack_settings, probe)


@pytest.mark.parametrize(("component", "http_offset"), COMPONENTS.items())
def test_grpc_requires_the_client_certificate(
    stack_settings: Settings, component: str, http_offset: int
) -> None:
    port = stack_settings.s3_port + http_offset + GRPC_OFFSET

    def probe() -> None:
        # plain gRPC, then TLS without a client certificate: the server never speaks HTTP/2
        assert not _is_h2_settings(_grpc_plaintext(port)), component
        plain_tls = _grpc_tls(port, stack_settings, with_client_cert=False)
        assert not _is_h2_settings(plain_tls), component
        # positive control: with the generated certificate it does
        assert _is_h2_settings(_grpc_tls(port, stack_settings, with_client_cert=True)), component

    _inside(stack_settings, probe)


def test_unused_catalog_ports_do_not_listen(stack_settings: Settings) -> None:
    def probe() -> None:
        for offset in (5, 6, 7):  # WebDAV, Iceberg REST catalog, Lance namespace: all off
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((stack_settings.host, stack_settings.s3_port + offset), 5)

    _inside(stack_settings, probe)


def test_keys_are_private(stack_settings: Settings) -> None:
    folder = security_dir(stack_settings)
    assert folder.stat().st_mode & 0o777 == 0o700
    # the four files weed reads, each 0600; the CA's private key is not among them
    files = {folder / SECURITY_FILE, *grpc_files(stack_settings)}
    assert set(folder.iterdir()) == files
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path.name
