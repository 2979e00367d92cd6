"""A bounded, cancellable thread pool for decoding request bodies off the event loop.

At most ``max_jobs`` bodies are waiting or being decoded; one more is refused at once
(:class:`inference.batcher.Overloaded`, answered 503 + Retry-After) instead of growing a queue
without bound. A job whose request is abandoned (timeout, client gone) is dropped if it has not
started; if it has, its ``cancelled`` callable turns true, and the decoder checks it between
images, so a 32-image request stops after the image in progress.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from inference.batcher import Overloaded

__all__ = ["DecodePool"]

T = TypeVar("T")


class DecodePool:
    def __init__(self, threads: int, max_jobs: int) -> None:
        if threads < 1 or max_jobs < 1:
            raise ValueError("threads and max_jobs must be >= 1")
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="lepton-decode")
        self._max_jobs = max_jobs
        self._lock = threading.Lock()
        self._jobs = 0  # admitted and not finished (released by the worker, not the waiter)

    @property
    def jobs(self) -> int:
        return self._jobs

    def _finished(self, _: Future[Any]) -> None:
        with self._lock:
            self._jobs -= 1

    async def run(self, fn: Callable[[Callable[[], bool]], T]) -> T:
        """``fn(cancelled)`` on a decode thread; raises Overloaded when the pool is full."""
        with self._lock:
            if self._jobs >= self._max_jobs:
                raise Overloaded(f"{self._jobs} request bodies already waiting to be decoded")
            self._jobs += 1
        stop = threading.Event()
        try:
            job = self._executor.submit(fn, stop.is_set)
        except BaseException:
            with self._lock:
                self._jobs -= 1
            raise
        job.add_done_callback(self._finished)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            stop.set()  # running: stop between images; not started: wrap_future cancelled it
            raise

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
