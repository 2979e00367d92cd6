"""Many small S3 objects into a folder (or up from memory), fast: the local runner's input
download at scale and the importers' uploads.

boto3 spends ~2 ms of CPU per GetObject (request building, signing, parsing, the GIL shared by
every thread): 32 threads moved ~420 small objects/s from SeaweedFS on loopback on 2 cores,
so 1,000,000 raw images would take 40 minutes before a step starts. Here one thread drives
CONNECTIONS keep-alive connections through libcurl's multi interface (pycurl), signing each
request with SigV4 itself (the day's signing key cached, keyed into an HMAC each request
copies: the same Authorization header as botocore's, tested). Measured on 2 cores, 20,000
small objects from SeaweedFS: 3,600-3,800 objects/s and 0.2 ms of client CPU an object,
against 2,000/s and 0.6 ms for the forked processes x threads over ``http.client`` this
replaced (bench/data_scale.py reports it at 100,000). Used for S3-compatible endpoints given
explicitly (the local object store); objects over a few MB, or any other endpoint, go through
boto3. The local SeaweedFS also serves S3 on a Unix socket (`local_s3_socket`), which runs in
its own network namespace behind a forwarder (services/netns.py): when that socket is there,
live and this user's, requests go through it, skipping TCP and the forwarder (100,000
objects: 4,268 objects/s, against 3,379 through the forwarder).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit
from xml.etree import ElementTree

CONNECTIONS = 32  # requests in flight (16: 3,200/s, 32: 3,600/s, 64: no better)
ATTEMPTS = 3  # per request, on connection errors (an HTTP error answer is not retried)
_UNSIGNED = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to GET: an explicit http(s) endpoint, path-style addressing."""

    scheme: str
    host: str  # host[:port]
    region: str
    access_key: str
    secret_key: str = field(repr=False)  # never in a traceback's or a log's repr
    token: str | None = field(repr=False)
    unix_socket: str | None = None  # the same server on a Unix socket: no TCP, no forwarder


def local_s3_socket(port: int) -> str:
    """The Unix socket the local SeaweedFS also serves S3 on, for the S3 port ``port``
    (services/definitions.py passes it as ``-s3.localSocket``; owner-only, as weed makes it)."""
    return f"/tmp/seaweedfs-s3-{port}.sock"


def socket_state(path: str) -> str | None:
    """ "live" or "dead" (nothing answers: weed leaves its socket behind when it stops) for a
    Unix socket of this user's at `path`; None for anything else."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        return None
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(1.0)  # a listener whose backlog is full must not hang the caller
        try:
            probe.connect(path)
        except (TimeoutError, BlockingIOError):
            return "live"  # held by a process too busy to take the connection
        except OSError:
            return "dead"
    return "live"


def _own_socket(path: str) -> bool:
    """A live Unix socket of this user's."""
    return socket_state(path) == "live"


def endpoint_of(client: Any) -> Endpoint | None:
    """The fast path's endpoint for a boto3 client, or None (use boto3) when it has no explicit
    endpoint URL or no static credentials."""
    url = str(client.meta.endpoint_url or "")
    if "amazonaws.com" in url or not url.startswith(("http://", "https://")):
        return None
    credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if credentials is None:
        return None
    frozen = credentials.get_frozen_credentials()
    parts = urlsplit(url)
    socket_path = None
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost") and parts.port:
        socket_path = local_s3_socket(parts.port)
        socket_path = socket_path if _own_socket(socket_path) else None
    return Endpoint(
        parts.scheme,
        parts.netloc,
        str(client.meta.region_name or "us-east-1"),
        frozen.access_key,
        frozen.secret_key,
        frozen.token,
        socket_path,
    )


def _signing_key(secret: str, day: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _sign(
    ep: Endpoint, path: str, stamp: str, keyed: Any, method: str, query: str
) -> dict[str, str]:
    """SigV4 headers of ``METHOD path?query`` at `stamp` (path URI-encoded; query canonical:
    sorted, every name and value URI-encoded). `keyed` is an HMAC keyed with the day's signing
    key, copied per request rather than keyed again."""
    headers = {"host": ep.host, "x-amz-content-sha256": _UNSIGNED, "x-amz-date": stamp}
    if ep.token:
        headers["x-amz-security-token"] = ep.token
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, query, *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names, _UNSIGNED]
    )
    scope = f"{stamp[:8]}/{ep.region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    mac = keyed.copy()
    mac.update(to_sign.encode())
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={ep.access_key}/{scope}, "
        f"SignedHeaders={names}, Signature={mac.hexdigest()}"
    )
    return headers


@dataclass
class _Request:
    key: str
    body: bytes | None  # what to PUT; None: GET
    done: Callable[[bytes], object]  # called with the answer's body
    attempts: int = 0


class _Signer:
    """SigV4 headers for one endpoint: the day's signing key, keyed into an HMAC, and the
    second's date stamp cached: 14 -> 6 us a request, of ~80 us of client CPU an object."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep, self.second, self.stamp, self.keyed = ep, -1, "", hmac.new(b"", None, "sha256")

    def headers(self, method: str, path: str, query: str = "") -> list[str]:
        second = int(time.time())
        if second != self.second:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            if stamp[:8] != self.stamp[:8]:
                key = _signing_key(self.ep.secret_key, stamp[:8], self.ep.region)
                self.keyed = hmac.new(key, None, "sha256")
            self.second, self.stamp = second, stamp
        signed = _sign(self.ep, path, self.stamp, self.keyed, method, query)
        # curl sends Host itself (the same host[:port]); "Expect:" turns off 100-continue
        return [f"{k}: {v}" for k, v in signed.items() if k != "host"] + ["Expect:"]


def _handle(ep: Endpoint) -> Any:
    """A curl handle with the options every request to ``ep`` shares."""
    import pycurl

    handle = pycurl.Curl()
    if ep.unix_socket:
        handle.setopt(pycurl.UNIX_SOCKET_PATH, ep.unix_socket)
    handle.setopt(pycurl.NOSIGNAL, 1)
    handle.setopt(pycurl.CONNECTTIMEOUT, 10)
    handle.setopt(pycurl.LOW_SPEED_LIMIT, 1)  # stalled for a minute: a connection error
    handle.setopt(pycurl.LOW_SPEED_TIME, 60)
    return handle


def _transfer(
    ep: Endpoint,
    bucket: str,
    requests: Iterable[_Request],
    on_done: Callable[[int], None] | None = None,
) -> int:
    """Run every request with at most CONNECTIONS in flight, on this thread; returns the count,
    passed to `on_done` after each request too. The first HTTP error (or a connection failing
    ATTEMPTS times) is raised as OSError."""
    import pycurl

    signer = _Signer(ep)
    multi = pycurl.CurlMulti()
    idle = [_handle(ep) for _ in range(CONNECTIONS)]
    active: dict[Any, tuple[_Request, io.BytesIO]] = {}
    todo, retry = iter(requests), list[_Request]()
    count = 0

    def start(handle: Any, req: _Request) -> None:
        path = "/" + quote(bucket, safe="") + "/" + quote(req.key, safe="/-_.~")
        method = "GET" if req.body is None else "PUT"
        answer = io.BytesIO()
        handle.setopt(pycurl.URL, f"{ep.scheme}://{ep.host}{path}")
        handle.setopt(pycurl.HTTPHEADER, signer.headers(method, path))
        handle.setopt(pycurl.WRITEFUNCTION, answer.write)
        if req.body is None:
            handle.setopt(pycurl.HTTPGET, 1)
        else:
            handle.setopt(pycurl.UPLOAD, 1)
            handle.setopt(pycurl.READFUNCTION, io.BytesIO(req.body).read)
            handle.setopt(pycurl.INFILESIZE_LARGE, len(req.body))
        multi.add_handle(handle)
        active[handle] = (req, answer)

    def finish(handle: Any) -> tuple[_Request, io.BytesIO]:
        multi.remove_handle(handle)
        idle.append(handle)
        return active.pop(handle)

    try:
        while True:
            while idle:
                req = retry.pop() if retry else next(todo, None)
                if req is None:
                    break
                start(idle.pop(), req)
            if not active:
                return count
            while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            while True:
                queued, succeeded, failed = multi.info_read()
                for handle in succeeded:
                    status = handle.getinfo(pycurl.RESPONSE_CODE)
                    req, answer = finish(handle)
                    data = answer.getvalue()
                    if status != 200:
                        method = "GET" if req.body is None else "PUT"
                        raise OSError(
                            f"{method} s3://{bucket}/{req.key}: HTTP {status} {data[:200]!r}"
                        )
                    req.done(data)
                    count += 1
                    if on_done is not None:
                        on_done(count)
                for handle, _code, message in failed:
                    req, _ = finish(handle)
                    req.attempts += 1
                    if req.attempts >= ATTEMPTS:
                        raise OSError(f"s3://{bucket}/{req.key}: {message}")
                    retry.append(req)
                if not queued:
                    break
            if active:
                multi.select(1.0)
    finally:
        for handle in list(active):
            multi.remove_handle(handle)
        for handle in [*idle, *active]:
            handle.close()
        multi.close()


def list_objects(ep: Endpoint, bucket: str, prefix: str, page: int = 1000) -> list[dict[str, Any]]:
    """Every object under `prefix` as ListObjectsV2 names them (``Key``, ``Size``, ``ETag``),
    in key order. boto3 spends ~55 us of CPU per listed key parsing pages (100,000 keys: 5.5 s);
    here one connection and ElementTree. Keys come URL-encoded and are decoded as botocore
    decodes them, so no key can break the XML."""
    import pycurl

    signer, path = _Signer(ep), "/" + quote(bucket, safe="")
    handle = _handle(ep)
    objects: list[dict[str, Any]] = []
    params = {"list-type": "2", "prefix": prefix, "max-keys": str(page), "encoding-type": "url"}
    try:
        while True:
            query = "&".join(
                f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                for k, v in sorted(params.items())
            )
            answer = io.BytesIO()
            handle.setopt(pycurl.URL, f"{ep.scheme}://{ep.host}{path}?{query}")
            handle.setopt(pycurl.HTTPHEADER, signer.headers("GET", path, query))
            handle.setopt(pycurl.WRITEFUNCTION, answer.write)
            try:
                handle.perform()
            except pycurl.error as exc:
                raise OSError(f"listing s3://{bucket}/{prefix}: {exc.args[-1]}") from None
            status = handle.getinfo(pycurl.RESPONSE_CODE)
            if status != 200:
                raise OSError(
                    f"listing s3://{bucket}/{prefix}: HTTP {status} {answer.getvalue()[:200]!r}"
                )
            root = ElementTree.fromstring(answer.getvalue())
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for item in root.iter(ns + "Contents"):
                objects.append(
                    {
                        "Key": unquote_plus(item.findtext(ns + "Key") or ""),
                        "Size": int(item.findtext(ns + "Size") or 0),
                        "ETag": item.findtext(ns + "ETag") or "",
                    }
                )
            token = root.findtext(ns + "NextContinuationToken")
            if root.findtext(ns + "IsTruncated") != "true" or not token:
                return objects
            params["continuation-token"] = token
    finally:
        handle.close()


def _write(target: str, data: bytes) -> None:
    tmp = target + ".part"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)  # a file is whole or absent: a rerun never trusts half of one


def fetch_objects(
    ep: Endpoint,
    bucket: str,
    pairs: Sequence[tuple[str, Path]],
    on_done: Callable[[int], None] | None = None,
) -> int:
    """GET every (key, local file) pair; folders must exist. Returns the count (`on_done` gets
    it after each object)."""
    return _transfer(
        ep,
        bucket,
        (_Request(k, None, functools.partial(_write, str(p))) for k, p in pairs),
        on_done,
    )


def put_objects(ep: Endpoint, bucket: str, items: Sequence[tuple[str, bytes]]) -> int:
    """PUT every (key, bytes) pair (imports and benchmarks use it)."""
    return _transfer(ep, bucket, (_Request(k, body, lambda _answer: None) for k, body in items))
