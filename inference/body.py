"""Request bodies over ASGI: sizes refused before reading, bytes counted as they arrive.

uvicorn (httptools) frames the body (``Content-Length`` or chunked) and hands it over in
messages; here it is gathered into one buffer under three bounds: the payload limit (413,
from ``Content-Length`` before any body byte is read), the bytes all requests may hold at
once (:class:`BodyBudget`, 503) and a deadline for the whole body (408). A chunked body is
charged for what was received, never for the limit it might reach.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from inference.codec import RequestError

__all__ = ["BodyBudget", "BodyRefused", "ClientGone", "content_length", "discard", "read_body"]

Receive = Any  # the ASGI receive callable (uvicorn's types are not public)

_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")  # str.isdigit() also accepts "²" and "١"


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


class BodyRefused(RequestError):
    """Answer ``status`` and close. ``unread``: the client may still be sending the body, so
    it is read and dropped for a moment first (a client that sends everything before reading,
    like ``http.client``, then still sees the answer instead of a reset)."""

    def __init__(self, status: int, message: str, *, unread: bool) -> None:
        super().__init__(status, message)
        self.unread = unread


class ClientGone(Exception):
    """The client closed the connection; there is nobody to answer."""


def content_length(raw: str | None) -> int | None:
    """The declared body size; None for none (or chunked). httptools already refuses bad ones;
    this is the application's own check, with ASCII digits only."""
    if raw is None:
        return None
    if not _ASCII_DIGITS.fullmatch(raw):
        raise BodyRefused(400, "invalid Content-Length", unread=False)
    return int(raw)


async def read_body(
    receive: Receive,
    length: int | None,
    *,
    max_bytes: int,
    timeout_s: float,
    budget: BodyBudget,
) -> tuple[bytes, int]:
    """The whole body and the bytes reserved for it in ``budget`` (the caller releases them).

    Raises BodyRefused (413 over ``max_bytes``, 503 budget exhausted, 408 too slow) or
    ClientGone.
    """
    if length is not None and length > max_bytes:
        raise BodyRefused(
            413, f"body of {length} bytes exceeds the limit of {max_bytes} bytes", unread=True
        )
    reserved = 0
    if length:
        if not budget.try_acquire(length):
            raise BodyRefused(503, "too many large requests in flight, retry shortly", unread=True)
        reserved = length
    buffer: bytearray | None = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk: bytes = message.get("body", b"")
                more = bool(message.get("more_body", False))
                if chunk and length is None:  # chunked: charge what arrived
                    received = len(chunk) + (len(buffer) if buffer is not None else 0)
                    if received > max_bytes:
                        raise BodyRefused(
                            413, f"body exceeds the limit of {max_bytes} bytes", unread=True
                        )
                    if not budget.try_acquire(len(chunk)):
                        raise BodyRefused(
                            503, "too many large requests in flight, retry shortly", unread=True
                        )
                    reserved += len(chunk)
                if buffer is None:
                    if not more:
                        return chunk, reserved  # the whole body in one message: no copy
                    buffer = bytearray(chunk)
                else:
                    buffer += chunk
                if not more:
                    return bytes(buffer), reserved
    except TimeoutError:
        budget.release(reserved)
        raise BodyRefused(408, "request body not received in time", unread=False) from None
    except BaseException:
        budget.release(reserved)
        raise


async def discard(receive: Receive, max_bytes: int, timeout_s: float = 1.0) -> None:
    """Read and drop what the client still sends (up to ``max_bytes`` or ``timeout_s``)."""
    try:
        async with asyncio.timeout(timeout_s):
            while max_bytes > 0:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return
                max_bytes -= len(message.get("body", b""))
    except TimeoutError:
        pass
