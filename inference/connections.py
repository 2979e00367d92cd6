"""uvicorn's httptools protocol with the connection limits a public endpoint needs.

httptools (llhttp) parses; uvicorn runs the connection and the ASGI app. On top of them:

- **Header deadline**: a connection has ``header_timeout_s`` from opening (or, kept alive, from
  the first byte of its next request) to the end of a request head; then it is closed (408 if
  it had started one). Kept-alive connections are also closed after uvicorn's
  ``timeout_keep_alive`` without a byte. Bytes trickling in never extend the deadline.
- **Head size**: at most ``max_header_bytes`` and ``max_headers`` (431), counted as they
  arrive, so a head that never ends cannot grow either.
- **Connection cap without lock-out**: beyond ``max_connections`` the oldest connection that
  has no request in progress (one that never sent a complete head first, then idle kept-alive
  ones) is closed to admit the new one; only when every connection is busy is the newcomer
  refused (503). So a flood of silent sockets cannot keep a real client out.
- **JSON errors**: malformed requests get a JSON body like every other error (400, or 505 for
  an unknown HTTP version); protocol upgrades are refused (400).
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["ConnectionPolicy", "protocol_class"]


@dataclass
class ConnectionPolicy:
    """Limits shared by all connections of one server, and its hooks for metrics/logs."""

    header_timeout_s: float
    max_header_bytes: int
    max_headers: int
    max_connections: int
    on_refused: Callable[[str, int], None] = lambda client, status: None
    on_evicted: Callable[[], None] = lambda: None
    # Connections without a request in progress, oldest first (dicts keep insertion order).
    fresh: collections.OrderedDict[LeptonProtocol, None] = field(
        default_factory=collections.OrderedDict
    )
    idle: collections.OrderedDict[LeptonProtocol, None] = field(
        default_factory=collections.OrderedDict
    )
    connections: set[Any] = field(default_factory=set)  # uvicorn's, once one is made

    def requests_in_progress(self) -> int:
        """Connections with a request dispatched and not yet answered."""
        return len(self.connections) - len(self.fresh) - len(self.idle)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LeptonProtocol(HttpToolsProtocol):
    policy: ClassVar[ConnectionPolicy]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # between requests or inside a head (no request dispatched)
        self._head_started = False  # a byte of the current head has been parsed
        self._unparsed = 0  # bytes received while in a head (catches heads that never end)
        self._head_size = 0  # bytes of URL and headers parsed so far
        self._header_count = 0
        self._refusal: _Refused | None = None

    # ------------------------------------------------------------------ connection events
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        policy = self.policy
        policy.connections = self.connections  # the server's set of open connections
        if len(self.connections) > policy.max_connections and not self._evict_one():
            self._refuse(503, "too many connections in use, retry shortly")
            return
        policy.fresh[self] = None
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        self.policy.fresh.pop(self, None)
        self.policy.idle.pop(self, None)
        super().connection_lost(exc)

    def _evict_one(self) -> bool:
        for waiting in (self.policy.fresh, self.policy.idle):
            while waiting:
                victim, _ = waiting.popitem(last=False)
                if victim is not self and not victim.transport.is_closing():
                    victim.transport.close()
                    self.policy.on_evicted()
                    return True
        return False

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head:
            self._unparsed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            refusal = self._refusal or _classify(exc)
            self._refuse(refusal.status, refusal.message)
            return
        except httptools.HttpParserUpgrade:  # pragma: no cover - refused in on_headers_complete
            self._refuse(400, "protocol upgrades are not supported")
            return
        if self._in_head and self._unparsed > self.policy.max_header_bytes:
            self._refuse(431, f"request head exceeds {self.policy.max_header_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.policy.idle[self] = None

    # ------------------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        self._head_size = 0
        self._header_count = 0
        if self._deadline is None:  # kept alive: the deadline runs from this first byte
            self._arm_deadline()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4, 1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_deadline()
        self._in_head = self._head_started = False
        self._unparsed = 0
        self.policy.fresh.pop(self, None)
        self.policy.idle.pop(self, None)
        if self.parser.should_upgrade():
            self._fail(400, "protocol upgrades are not supported; send the request without Upgrade")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._unparsed = 0

    # ------------------------------------------------------------------------- internals
    def _count_head(self, size: int, headers: int) -> None:
        self._head_size += size
        self._header_count += headers
        if self._header_count > self.policy.max_headers:
            self._fail(431, f"more than {self.policy.max_headers} headers")
        if self._head_size > self.policy.max_header_bytes:
            self._fail(431, f"request head exceeds {self.policy.max_header_bytes} bytes")

    def _fail(self, status: int, message: str) -> None:
        """Stop parsing from inside a callback; data_received answers."""
        self._refusal = _Refused(status, message)
        raise self._refusal

    def _arm_deadline(self) -> None:
        self._disarm_deadline()
        self._deadline = self.loop.call_later(self.policy.header_timeout_s, self._head_too_slow)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._head_started:
            self._refuse(408, "request headers not received in time")
        else:  # never sent a byte: nobody to answer
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error (unless a response already started) and close."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                self.transport.close()
                return
            cycle.disconnected = True  # the app's answer, if any, is dropped
            cycle.message_event.set()
        body = json.dumps({"error": message}).encode()
        headers = [b"content-type: application/json", b"content-length: %d" % len(body)]
        headers += [b"connection: close"] + ([b"retry-after: 1"] if status == 503 else [])
        if not self.transport.is_closing():
            self.transport.write(STATUS_LINE[status] + b"\r\n".join(headers) + b"\r\n\r\n" + body)
            self.transport.close()
        client = self.client[0] if self.client else "-"
        self.policy.on_refused(client, status)


def _classify(exc: httptools.HttpParserError) -> _Refused:
    text = str(exc)
    if "HTTP version" in text:
        return _Refused(505, "unsupported HTTP version; use HTTP/1.1")
    return _Refused(400, f"malformed HTTP request ({text[:100]})")


def protocol_class(policy: ConnectionPolicy) -> type[LeptonProtocol]:
    """A protocol class bound to ``policy`` (uvicorn instantiates it per connection)."""
    return type("BoundLeptonProtocol", (LeptonProtocol,), {"policy": policy})
