"""Delivery to a tracking server that may go away while a job runs.

:class:`MetricOutbox`: one daemon thread sends metric batches in order. A batch that fails for
a reason that can pass (the server is unreachable, times out or answers 5xx) stays at the head
of the queue and is sent again once the server answers its health probe, so an outage costs
the training loop nothing and loses nothing that the job's end can still deliver. A batch the
server refuses (4xx) is dropped with a warning: sending it again would not help. MLflow
deduplicates identical metrics (key, value, timestamp, step), so a batch resent after a lost
response is stored once.

:class:`RetryWindow`: the job's closing calls (the buffered metrics, artifacts, the run's
status) are retried while the server is away, within one window that opens at the first
failure and is shared by all of them; once it has closed, the rest are skipped and recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

RETRY_EVERY_S = 2.0  # pause between health probes while the server is away


def retryable(exc: BaseException) -> bool:
    """True for failures that can pass by themselves: no answer, a timeout, a 5xx.

    MLflow reports a transport failure (refused, reset, timed out, retries exhausted) as an
    MlflowException with its default code INTERNAL_ERROR (HTTP 500) and a server's refusal
    with that refusal's code; anything else is a bug in the caller, not an outage.
    """
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.get_http_status_code() >= 500
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500
    return isinstance(exc, (ConnectionError, TimeoutError, requests.RequestException))


class MetricOutbox:
    """An ordered queue of metric batches and the thread that delivers them.

    ``send`` delivers one batch (raises on failure); ``answers`` is a cheap probe of the
    server (True when it should be tried again). Neither is called on the caller's thread.
    """

    def __init__(
        self,
        send: Callable[[Sequence[Any]], None],
        answers: Callable[[], bool],
        describe: str,
        retry_every_s: float = RETRY_EVERY_S,
    ) -> None:
        self._send = send
        self._answers = answers
        self._describe = describe
        self._retry_every_s = retry_every_s
        self._queue: deque[Sequence[Any]] = deque()
        self._cond = threading.Condition()
        self.closed = False  # no more sending: what is queued stays there
        self.offline = False  # the last send failed and nothing was delivered since
        self.dropped = 0  # batches the server refused
        self._thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def put(self, batch: Sequence[Any]) -> None:
        with self._cond:
            self._queue.append(batch)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def wait(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the queue to empty; return the batches still queued."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._cond:
            while self._queue and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
            return len(self._queue)

    def close(self) -> int:
        """Stop the thread (an in-flight send is abandoned); return the batches not sent."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            return len(self._queue)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self.closed:
                    self._cond.wait()
                if self.closed:
                    return
                batch = self._queue[0]
            try:
                if self.offline and not self._answers():
                    raise ConnectionError("no answer to the health probe")
                self._send(batch)
            except Exception as exc:
                if not retryable(exc):
                    log.warning(
                        "tracking: %s refused a metrics batch, dropped: %s", self._describe, exc
                    )
                    self._delivered(dropped=True)
                    continue
                if not self.offline:
                    self.offline = True
                    print(
                        f"tracking: WARNING {self._describe} is unreachable ({_short(exc)}); "
                        "metrics are buffered and sent when it is back",
                        flush=True,
                    )
                with self._cond:
                    if not self.closed:
                        self._cond.wait(self._retry_every_s)
                continue
            self._delivered(dropped=False)

    def _delivered(self, dropped: bool) -> None:
        with self._cond:
            self._queue.popleft()
            left = len(self._queue)
            self._cond.notify_all()
        was_offline, self.offline = self.offline, False  # it answered, even if it refused
        self.dropped += int(dropped)
        if was_offline:
            print(
                f"tracking: {self._describe} is back; delivering buffered metrics "
                f"({left} batch(es) still queued)",
                flush=True,
            )


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RetryWindow:
    """One retry deadline for the closing calls of a job, opened at the first failure."""

    def __init__(self, window_s: float, answers: Callable[[], bool], describe: str) -> None:
        self.window_s = window_s
        self._answers = answers
        self._describe = describe
        self._deadline: float | None = None
        self.missing: list[str] = []  # closing calls that never reached the server

    def shorten(self, window_s: float) -> None:
        """At most ``window_s`` from now (a failed or killed job has little time left)."""
        self.window_s = min(self.window_s, window_s)
        if self._deadline is not None:
            self._deadline = min(self._deadline, time.monotonic() + window_s)

    def left_s(self) -> float:
        return float("inf") if self._deadline is None else self._deadline - time.monotonic()

    def _open(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.window_s
            print(
                f"tracking: WARNING {self._describe} does not answer; the job waits up to "
                f"{self.window_s:.0f} s for it, then finishes without it",
                flush=True,
            )

    def call(self, what: str, fn: Callable[[], object]) -> bool:
        """Run ``fn``, again while the server is away and the window is open; False (and
        ``what`` recorded as missing) when it never succeeded. A refusal (4xx) raises."""
        while self.left_s() > 0:
            try:
                fn()
                return True
            except Exception as exc:
                if not retryable(exc):
                    raise  # the server answered and refused: a bug to see, not an outage
                self._open()
                time.sleep(min(RETRY_EVERY_S, max(self.left_s(), 0.0)))
                while self.left_s() > 0 and not self._answers():
                    time.sleep(min(RETRY_EVERY_S, max(self.left_s(), 0.0)))
        self.missing.append(what)
        return False

    def drain(self, outbox: MetricOutbox) -> int:
        """Wait for ``outbox`` to deliver everything: as long as sending takes while the server
        answers, until the window closes while it is away. Returns the batches left."""
        while outbox.pending and not outbox.closed and self.left_s() > 0:
            if outbox.offline:
                self._open()
            outbox.wait(min(1.0, max(self.left_s(), 0.0)))
        return outbox.pending
