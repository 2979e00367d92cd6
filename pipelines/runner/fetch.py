"""Many small S3 objects into a folder, fast: the local runner's input download at scale.

boto3 spends ~2 ms of CPU per GetObject (request building, signing, parsing, the GIL shared by
every thread): 32 threads moved ~420 small objects/s from SeaweedFS on loopback on 2 cores,
so 1,000,000 raw images would take 40 minutes before a step starts. Here a few forked
processes each run a handful of threads over keep-alive ``http.client`` connections, signing
each GET with SigV4 themselves (the HMAC chain's key is cached per day): measured ~4x
boto3's rate (bench/data_scale.py). Used for S3-compatible endpoints given explicitly (the
local object store); objects over a few MB, or any other endpoint, go through boto3.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import multiprocessing as mp
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

PROCESSES = 4  # forked fetchers: the GIL, not the network, bounds one process
THREADS = 8  # connections per process
_UNSIGNED = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to GET: an explicit http(s) endpoint, path-style addressing."""

    scheme: str
    host: str  # host[:port]
    region: str
    access_key: str
    secret_key: str
    token: str | None


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
    return Endpoint(
        parts.scheme,
        parts.netloc,
        str(client.meta.region_name or "us-east-1"),
        frozen.access_key,
        frozen.secret_key,
        frozen.token,
    )


def _signing_key(secret: str, day: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signed_headers(
    ep: Endpoint, path: str, now: dt.datetime, key: bytes, method: str = "GET"
) -> dict[str, str]:
    """SigV4 headers of ``METHOD path`` (path already URI-encoded, no query)."""
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"host": ep.host, "x-amz-content-sha256": _UNSIGNED, "x-amz-date": stamp}
    if ep.token:
        headers["x-amz-security-token"] = ep.token
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names, _UNSIGNED]
    )
    scope = f"{day}/{ep.region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={ep.access_key}/{scope}, "
        f"SignedHeaders={names}, Signature={signature}"
    )
    return headers


class _Client:
    """One thread's keep-alive connection."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.conn: http.client.HTTPConnection | None = None
        self.key_day, self.key = "", b""

    def get(self, bucket: str, key: str, body: bytes | None = None) -> bytes:
        """GET the object (or PUT `body` there); its bytes (or the answer's)."""
        method = "GET" if body is None else "PUT"
        path = "/" + quote(bucket, safe="") + "/" + quote(key, safe="/-_.~")
        for attempt in range(3):
            now = dt.datetime.now(dt.UTC)
            if now.strftime("%Y%m%d") != self.key_day:
                self.key_day = now.strftime("%Y%m%d")
                self.key = _signing_key(self.ep.secret_key, self.key_day, self.ep.region)
            if self.conn is None:
                cls = (
                    http.client.HTTPSConnection
                    if self.ep.scheme == "https"
                    else http.client.HTTPConnection
                )
                self.conn = cls(self.ep.host, timeout=60)
            try:
                headers = signed_headers(self.ep, path, now, self.key, method)
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status != 200:
                raise OSError(f"{method} s3://{bucket}/{key}: HTTP {resp.status} {data[:200]!r}")
            return data
        raise AssertionError("unreachable")


def _fetch_part(args: tuple[Endpoint, str, list[tuple[str, str]]]) -> int:
    ep, bucket, pairs = args
    local = threading.local()

    def one(pair: tuple[str, str]) -> None:
        getter = getattr(local, "getter", None)
        if getter is None:
            getter = local.getter = _Client(ep)
        key, target = pair
        body = getter.get(bucket, key)
        tmp = target + ".part"
        with open(tmp, "wb") as fh:
            fh.write(body)
        os.replace(tmp, target)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, pairs))
    return len(pairs)


def fetch_objects(ep: Endpoint, bucket: str, pairs: Sequence[tuple[str, Path]]) -> int:
    """GET every (key, local file) pair; folders must exist. Returns the count."""
    items = [(k, str(p)) for k, p in pairs]
    if len(items) < 64 * THREADS:
        return _fetch_part((ep, bucket, items))
    procs = min(PROCESSES, max(1, os.cpu_count() or 1) * 2)
    parts = [(ep, bucket, items[i::procs]) for i in range(procs)]
    with mp.get_context("fork").Pool(procs) as pool:  # fork: starts in milliseconds
        return sum(pool.map(_fetch_part, parts))


def put_objects(ep: Endpoint, bucket: str, items: Sequence[tuple[str, bytes]]) -> int:
    """PUT every (key, bytes) pair on this process's threads (imports and benchmarks use it)."""
    local = threading.local()

    def one(item: tuple[str, bytes]) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = _Client(ep)
        client.get(bucket, item[0], item[1])

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, items))
    return len(items)
