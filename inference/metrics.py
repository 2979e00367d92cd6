"""Prometheus text-format metrics (exposition format 0.0.4), without a client library.

All updates happen on the server's event-loop thread, so no locking is needed.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter

__all__ = ["Histogram", "ServerMetrics"]

# Seconds; from a cache-hot tiny model (~0.3 ms) to a saturated queue (SageMaker times out at 60 s).
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # last: +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            cumulative += n
            lines.append(f'{name}_bucket{{le="{_num(bound)}"}} {cumulative}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {_num(self.total)}")
        lines.append(f"{name}_count {self.count}")
        return lines


def _num(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


class ServerMetrics:
    def __init__(self) -> None:
        self.latency = Histogram(LATENCY_BUCKETS_S)  # POST /invocations, read-to-written
        self.batch_size = Histogram(BATCH_BUCKETS)  # images per model call
        self.responses: Counter[tuple[str, int]] = Counter()  # (path, status)
        self.errors: Counter[int] = Counter()  # status >= 400, any path
        self.images = 0
        self.in_flight = 0
        self.queued_images = 0
        self.model_loaded = 0

    def record_response(self, path: str, status: int) -> None:
        known = (
            path
            if path in ("/ping", "/invocations", "/metrics", "/execution-parameters")
            else "other"
        )
        self.responses[(known, status)] += 1
        if status >= 400:
            self.errors[status] += 1

    def render(self) -> str:
        lines = self.latency.render(
            "lepton_invocation_latency_seconds",
            "POST /invocations latency from request read to response written.",
        )
        lines += self.batch_size.render(
            "lepton_batch_size", "Images per model call after micro-batching."
        )
        lines += [
            "# HELP lepton_responses_total HTTP responses by path and status.",
            "# TYPE lepton_responses_total counter",
        ]
        for (path, status), n in sorted(self.responses.items()):
            lines.append(f'lepton_responses_total{{path="{path}",status="{status}"}} {n}')
        lines += [
            "# HELP lepton_errors_total Error responses (status >= 400) by status.",
            "# TYPE lepton_errors_total counter",
        ]
        for status, n in sorted(self.errors.items()):
            lines.append(f'lepton_errors_total{{status="{status}"}} {n}')
        for name, kind, value, help_text in (
            ("lepton_images_total", "counter", self.images, "Images classified."),
            ("lepton_in_flight_requests", "gauge", self.in_flight, "Requests being processed."),
            (
                "lepton_queued_images",
                "gauge",
                self.queued_images,
                "Images waiting for a model call.",
            ),
            (
                "lepton_model_loaded",
                "gauge",
                self.model_loaded,
                "1 when a model is loaded and serving.",
            ),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"
