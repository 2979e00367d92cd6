"""The endpoint's Prometheus metrics (``GET /metrics``), kept by ``prometheus-client``.

Each server owns its registry, so several servers in one process (tests) never share counts.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

# What prometheus-client's own handlers answer by default: the text is the 0.0.4 format.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Seconds; from a cache-hot tiny model (~0.3 ms) to a saturated queue (SageMaker times out at 60 s).
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
KNOWN_PATHS = frozenset({"/ping", "/invocations", "/metrics", "/execution-parameters"})


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.latency = Histogram(
            "lepton_invocation_latency_seconds",
            "POST /invocations latency from request head read to response written.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "lepton_batch_size",
            "Images per model call after micro-batching.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self._responses = Counter(
            "lepton_responses", "HTTP responses by path and status.", ["path", "status"], registry=r
        )
        self._errors = Counter(
            "lepton_errors", "Error responses (status >= 400) by status.", ["status"], registry=r
        )
        self.images = Counter("lepton_images", "Images classified.", registry=r)
        self.in_flight = Gauge("lepton_in_flight_requests", "Requests being processed.", registry=r)
        self.model_loaded = Gauge(
            "lepton_model_loaded", "1 when a model is loaded and serving.", registry=r
        )
        self.disconnects = Counter(
            "lepton_client_disconnects",
            "Requests abandoned by their client before the answer; their work was cancelled.",
            registry=r,
        )
        self.evicted_connections = Counter(
            "lepton_evicted_connections",
            "Connections without a request closed to make room for a new connection.",
            registry=r,
        )
        self._gauges: dict[str, Gauge] = {
            name: Gauge(name, help_text, registry=r)
            for name, help_text in (
                ("lepton_queued_images", "Images (and explanations) waiting for a model call."),
                ("lepton_decode_jobs", "Request bodies being decoded or waiting for a decoder."),
                ("lepton_open_connections", "Open HTTP connections."),
                ("lepton_request_body_bytes", "Bytes of request bodies held (received so far)."),
                ("lepton_captured_requests", "Requests queued for data capture (since start)."),
                (
                    "lepton_capture_dropped",
                    "Sampled requests not captured: queue full (since start).",
                ),
                ("lepton_capture_failed", "Captured requests whose upload failed (since start)."),
            )
        }
        self._by_status: dict[tuple[str, int], tuple[Counter, Counter | None]] = {}

    def watch(self, name: str, read: Callable[[], float]) -> None:
        """Report ``read()`` as the gauge ``name`` at every scrape."""
        self._gauges[name].set_function(read)

    def record_response(self, path: str, status: int) -> None:
        key = (path if path in KNOWN_PATHS else "other", status)
        children = self._by_status.get(key)
        if children is None:  # label lookup once per (path, status), not per request
            error = self._errors.labels(str(status)) if status >= 400 else None
            children = (self._responses.labels(key[0], str(status)), error)
            self._by_status[key] = children
        children[0].inc()
        if children[1] is not None:
            children[1].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
