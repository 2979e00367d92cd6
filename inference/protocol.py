"""A small, strict HTTP/1.1 reader and writer for asyncio streams.

Only what an inference endpoint needs: request line, headers, ``Content-Length`` or chunked
bodies, keep-alive, ``Expect: 100-continue``. Everything is bounded: header bytes, header count,
body bytes (refused from ``Content-Length`` *before* any body byte is read) and wall-clock time
for headers and body, so a slow or hostile client cannot hold memory or a worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

__all__ = ["BodyBudget", "HttpError", "Limits", "Request", "read_request", "render_response"]

_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 6_291_456  # SageMaker's real-time payload limit, 6 MiB
    max_header_bytes: int = 16_384  # request line + all headers
    max_headers: int = 100
    header_timeout_s: float = 10.0  # from the first byte of a request to its blank line
    body_timeout_s: float = 30.0  # to receive the whole body (>= 200 KB/s for 6 MiB)
    keepalive_timeout_s: float = 75.0  # idle time between requests (above SageMaker's 60 s)


class BodyBudget:
    """Bytes of request bodies the server may hold at once (all connections together), so a
    thousand clients uploading 6 MiB each cannot make it hold 6 GB. One request is always
    admitted, whatever its size (up to the body limit)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_use = 0

    def try_acquire(self, n: int) -> bool:
        if self.in_use and self.in_use + n > self.max_bytes:
            return False
        self.in_use += n
        return True

    def release(self, n: int) -> None:
        self.in_use = max(0, self.in_use - n)


@dataclass
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    keep_alive: bool = True
    reserved: int = 0  # bytes held in the BodyBudget until the caller releases them


class HttpError(Exception):
    """Answer ``status`` with ``message`` and close the connection (framing is unknown)."""

    def __init__(self, status: int, message: str, *, drain: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.drain = drain  # body bytes worth discarding before closing (politeness only)
        self.method = "-"  # filled in once the request line is parsed, for the access log
        self.path = "-"


async def _with_deadline(awaitable, timeout: float, status: int, message: str):  # type: ignore[no-untyped-def]
    try:
        async with asyncio.timeout(timeout):  # a timer, not a task per read like wait_for
            return await awaitable
    except TimeoutError:
        raise HttpError(status, message) from None


def _parse_head(head: bytes, limits: Limits) -> Request:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "request head is not text") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(
            505 if version.startswith("HTTP/") else 400, f"unsupported protocol {version[:20]!r}"
        )
    headers: dict[str, str] = {}
    header_lines = [line for line in lines[1:] if line]
    if len(header_lines) > limits.max_headers:
        raise HttpError(431, f"more than {limits.max_headers} headers")
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise HttpError(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    path, _, query = target.partition("?")
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    return Request(method.upper(), path, query, version, headers, keep_alive=keep_alive)


def _content_length(headers: dict[str, str]) -> int:
    raw = headers.get("content-length")
    if raw is None:
        return 0
    values = {v.strip() for v in raw.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise HttpError(400, "invalid Content-Length")
    return int(values.pop())


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(400, "malformed chunk size") from None
        if size < 0:
            raise HttpError(400, "malformed chunk size")
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers: ignored
                pass
            return b"".join(chunks)
        total += size
        if total > limit:
            raise HttpError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError(400, "malformed chunk terminator")


async def read_request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    limits: Limits,
    on_start: Callable[[], object] | None = None,
    budget: BodyBudget | None = None,
) -> Request | None:
    """The next request on a connection, or None when the client closed or idled out.

    ``on_start`` is called when the first byte of a request arrives (the request is in flight).
    With a ``budget``, the body's bytes are reserved before reading it (503 when exhausted);
    the caller releases ``request.reserved`` once done with the request.

    Raises HttpError for a request that must be refused (the caller answers and closes).
    """
    try:
        async with asyncio.timeout(limits.keepalive_timeout_s):
            first = await reader.read(1)
    except (TimeoutError, ConnectionError):
        return None
    if not first:
        return None
    if on_start is not None:
        on_start()
    try:
        rest = await _with_deadline(
            reader.readuntil(b"\r\n\r\n"),
            limits.header_timeout_s,
            408,
            "request headers not received in time",
        )
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"request head exceeds {limits.max_header_bytes} bytes") from None
    except asyncio.IncompleteReadError:
        return None
    head = first + rest[:-4]
    if len(head) > limits.max_header_bytes:
        raise HttpError(431, f"request head exceeds {limits.max_header_bytes} bytes")
    request = _parse_head(head, limits)
    try:
        return await _read_body(reader, writer, limits, request, budget)
    except HttpError as exc:
        exc.method, exc.path = request.method, request.path
        raise


async def _read_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    limits: Limits,
    request: Request,
    budget: BodyBudget | None,
) -> Request | None:
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if "transfer-encoding" in request.headers and (
        not chunked or "content-length" in request.headers
    ):
        raise HttpError(400, "unsupported Transfer-Encoding / Content-Length combination")
    length = _content_length(request.headers)
    if length > limits.max_body_bytes:
        raise HttpError(
            413,
            f"body of {length} bytes exceeds the limit of {limits.max_body_bytes} bytes",
            drain=length,
        )
    reserve = limits.max_body_bytes if chunked else length
    if budget is not None and reserve:
        if not budget.try_acquire(reserve):
            raise HttpError(503, "too many large requests in flight, retry shortly", drain=length)
        request.reserved = reserve
    if request.headers.get("expect", "").lower() == "100-continue" and (length or chunked):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    result = None
    try:
        result = await _read_payload(reader, limits, request, chunked, length)
        return result
    finally:
        if result is None and budget is not None:  # refused, timed out or client gone
            budget.release(request.reserved)


async def _read_payload(
    reader: asyncio.StreamReader, limits: Limits, request: Request, chunked: bool, length: int
) -> Request | None:
    try:
        if chunked:
            request.body = await _with_deadline(
                _read_chunked(reader, limits.max_body_bytes),
                limits.body_timeout_s,
                408,
                "request body not received in time",
            )
        elif length:
            request.body = await _with_deadline(
                reader.readexactly(length),
                limits.body_timeout_s,
                408,
                "request body not received in time",
            )
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(400, "malformed chunked body") from None
    return request


def render_response(
    status: int,
    body: bytes,
    content_type: str = "application/json",
    keep_alive: bool = True,
    extra_headers: dict[str, str] | None = None,
    head_only: bool = False,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    if extra_headers:
        lines.extend(f"{k}: {v}" for k, v in extra_headers.items())
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
