"""Data capture: a sample of requests and answers, written to S3 in SageMaker's layout.

    <destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/<mm-ss-mmm>-<uuid>.jsonl

one JSON line per request, as SageMaker's DataCaptureConfig writes them:
`{"captureData": {"endpointInput": {"observedContentType", "mode": "INPUT", "data",
"encoding": "BASE64"}, "endpointOutput": {..., "mode": "OUTPUT", "encoding": "JSON"}},
"eventMetadata": {"eventId", "inferenceTime"}, "eventVersion": "0"}`.

Capture never slows or fails a request: `offer` samples, then puts the pair on a bounded
queue (by count and by bytes) or drops it, counted; a writer thread batches what is queued into
one object per hour folder every few seconds. On AWS the endpoint config's DataCaptureConfig
writes the same layout, and `pipelines/monitor` reads either.
"""

from __future__ import annotations

import base64
import json
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

VARIANT = "AllTraffic"  # SageMaker's default production variant name
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class CapturedEvent:
    input: bytes
    input_type: str
    output: bytes
    output_type: str
    time: datetime


def hour_prefix(destination: str, endpoint: str, variant: str, when: datetime) -> str:
    """`<destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/` of an instant (UTC)."""
    return f"{destination.rstrip('/')}/{endpoint}/{variant}/{when.astimezone(UTC):%Y/%m/%d/%H}/"


def encode_event(
    body: bytes, content_type: str, answer: bytes, answer_type: str, when: datetime
) -> dict[str, Any]:
    return {
        "captureData": {
            "endpointInput": {
                "observedContentType": content_type,
                "mode": "INPUT",
                "data": base64.b64encode(body).decode("ascii"),
                "encoding": "BASE64",
            },
            "endpointOutput": {
                "observedContentType": answer_type,
                "mode": "OUTPUT",
                "data": answer.decode("utf-8", errors="replace"),
                "encoding": "JSON",
            },
        },
        "eventMetadata": {"eventId": str(uuid.uuid4()), "inferenceTime": f"{when:{TIME_FORMAT}}"},
        "eventVersion": "0",
    }


def _payload(part: dict[str, Any]) -> bytes:
    data = str(part.get("data", ""))
    if part.get("encoding", "").upper() == "BASE64":
        return base64.b64decode(data)
    return data.encode("utf-8")


def parse_event(line: str | bytes) -> CapturedEvent:
    """One captured line (ours or SageMaker's); ValueError if it is not one."""
    try:
        doc = json.loads(line)
        data = doc["captureData"]
        given, answered = data["endpointInput"], data["endpointOutput"]
        when = datetime.strptime(doc["eventMetadata"]["inferenceTime"], TIME_FORMAT)
        return CapturedEvent(
            _payload(given),
            str(given.get("observedContentType", "")),
            _payload(answered),
            str(answered.get("observedContentType", "")),
            when.replace(tzinfo=UTC),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a data-capture record: {exc}") from None


def iter_events(text: str) -> Iterator[CapturedEvent | ValueError]:
    """Every line of a capture file: the event, or the error of a line that is not one."""
    for line in text.splitlines():
        if line.strip():
            try:
                yield parse_event(line)
            except ValueError as exc:
                yield exc


class DataCapture:
    """Sample and write request/answer pairs without ever blocking the caller."""

    def __init__(
        self,
        destination: str,
        endpoint: str,
        percent: float,
        put: Callable[[str, bytes], None],  # (s3:// URI, body); raises on failure
        *,
        variant: str = VARIANT,
        max_events: int = 2000,
        max_bytes: int = 64 << 20,
        flush_s: float = 5.0,
    ) -> None:
        if not 0 <= percent <= 100:
            raise ValueError(f"capture percent must be in 0..100, got {percent}")
        self.destination, self.endpoint, self.variant = destination, endpoint, variant
        self.percent, self.put, self.flush_s = percent, put, flush_s
        self.max_bytes = max_bytes
        self.max_events = max_events
        # queued or being written: what the bounds count (the writer holds a batch a while)
        # raw (body, content type, answer, answer type, time, size): encoded on the writer thread
        self.queue: queue.Queue[tuple[bytes, str, bytes, str, datetime, int] | None] = queue.Queue()
        self.pending_events = self.pending_bytes = 0
        self.lock = threading.Lock()
        self.captured = self.dropped = self.failed = self.written = 0
        self.thread = threading.Thread(target=self._run, name="data-capture", daemon=True)
        self.thread.start()

    def offer(self, body: bytes, content_type: str, answer: bytes, answer_type: str) -> bool:
        """Queue a pair if it is sampled and there is room; returns whether it was queued."""
        if self.percent <= 0 or random.random() * 100 >= self.percent:
            return False
        size = len(body) * 4 // 3 + len(answer)
        with self.lock:
            full = self.pending_events >= self.max_events
            if full or self.pending_bytes + size > self.max_bytes:
                self.dropped += 1
                return False
            self.pending_events += 1
            self.pending_bytes += size
            self.captured += 1
        self.queue.put_nowait((body, content_type, answer, answer_type, datetime.now(UTC), size))
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop (the server's drain calls this)."""
        self.queue.put(None)  # unbounded: the bounds are counted in offer
        self.thread.join(timeout_s)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[tuple[str, dict[str, Any]]] = []
            held = 0
            deadline = time.monotonic() + self.flush_s
            while len(batch) < 1000:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                body, content_type, answer, answer_type, when, size = item
                held += size
                prefix = hour_prefix(self.destination, self.endpoint, self.variant, when)
                batch.append((prefix, encode_event(body, content_type, answer, answer_type, when)))
            if batch:
                self._write(batch)
                with self.lock:
                    self.pending_events -= len(batch)
                    self.pending_bytes -= held

    def _write(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        by_hour: dict[str, list[dict[str, Any]]] = {}
        for prefix, event in events:
            by_hour.setdefault(prefix, []).append(event)
        for prefix, group in by_hour.items():
            now = datetime.now(UTC)
            name = f"{now:%M-%S}-{now.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
            body = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in group).encode()
            for attempt in range(3):
                try:
                    self.put(prefix + name, body)
                    self.written += len(group)
                    break
                except Exception:  # noqa: BLE001 - capture must never take the server down
                    time.sleep(0.5 * 2**attempt)
            else:
                self.failed += len(group)


def s3_put(client: Any) -> Callable[[str, bytes], None]:
    """A `put` for DataCapture writing through a boto3 S3 client."""

    def put(uri: str, body: bytes) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/jsonlines")

    return put
