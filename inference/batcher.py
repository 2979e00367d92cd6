"""Dynamic micro-batching on an asyncio loop, with model calls on a thread pool.

Requests queue their ``[n, H, W, C]`` pixels; a dispatcher takes a free worker, then gathers
queued requests (whole requests only, at most ``max_batch`` images) and runs one model call.
It waits up to ``max_wait_s`` for more images only while other requests are known to be on
their way (announced but not yet queued), and, while fewer images are queued than the last
batch had, up to 10% of that batch's model time (<= 300 ms): under steady load they are about
to come back. So a lone client pays no batching delay while a busy server fills its batches.
ONNX Runtime releases the GIL, so workers overlap with the event loop's parsing.

A model known to be fast (its last call took under ``INLINE_MAX_S`` for as many images) runs
on the event loop itself when the server is otherwise idle (nothing queued, running or on its
way, and no other request received): a lone client then skips the two thread hand-offs,
which cost a tiny model more than its own call. Anything else, and any model not yet
measured, goes through the workers.

Work that cannot be batched (saliency maps) queues in the same line with :meth:`call`: it
counts against the same queue limit, waits its turn and takes a worker like a batch does.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MicroBatcher", "Overloaded"]


# Waiting for the rest of the last batch's images: at most this share of its model time, and
# at most this long. resnet18 at 224 px, 32 clients (bench/serve.py --arch resnet18): batches of
# 1 and 31 alternated without it; with 5% / 50 ms a straggler still missed its batch now and
# then (p99 ~2.2 full batches); with 10% / 100 ms p99 was 1.4-1.7 batches. On a host where the
# model took ~2 s a batch (raw ONNX Runtime 14-18 images/s), 32 JSON bodies took longer than
# 100 ms to come back: 22.9 images per call, p99 1.95-2.56 batches; with a 300 ms cap 31.4
# images per call, p99 1.42-1.51. A 1 ms model waits <= 100 us; a lone client sending
# same-size requests never waits (none fewer than last).
EXPECT_SHARE = 0.1
EXPECT_MAX_S = 0.3
# A model call this short runs on the loop when nothing else is in flight: the tiny test model
# (~0.1 ms) at concurrency 1 went from about 1,080 to 1,630 requests/s (bench/serve.py);
# a request that arrives meanwhile waits at most this long for the loop.
INLINE_MAX_S = 0.001


class Overloaded(RuntimeError):
    """The queue is full; the caller should answer 503 with Retry-After."""


@dataclass
class _Item:
    pixels: np.ndarray | None  # None: an unbatchable call
    future: asyncio.Future[Any]
    weight: int  # images it stands for in the queue limit
    call: Callable[[], Any] | None = None


class MicroBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        *,
        workers: int,
        max_batch: int,
        max_wait_s: float,
        max_queued_images: int,
        on_batch: Callable[[int], None] | None = None,
        in_progress: Callable[[], int] = lambda: 1,
    ) -> None:
        if workers < 1 or max_batch < 1 or max_wait_s < 0:
            raise ValueError("workers and max_batch must be >= 1, max_wait_s >= 0")
        self._predict = predict
        self._executor = executor
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_queued = max_queued_images
        self._on_batch = on_batch
        self._in_progress = in_progress  # requests the server is handling, the caller's included
        self._workers = asyncio.Semaphore(workers)
        self._queue: collections.deque[_Item] = collections.deque()
        self.queued_images = 0
        self._announced = 0
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._last_rows = 0  # images in the last model call
        self._last_call_s = 0.0  # its duration
        self._busy = 0  # model calls taken from the queue and not yet answered

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch_forever())

    def announce(self) -> None:
        """A request has arrived and will probably submit soon (lets the dispatcher wait)."""
        self._announced += 1

    def withdraw(self) -> None:
        """An announced request will not submit (it failed validation)."""
        self._announced = max(0, self._announced - 1)

    async def submit(self, pixels: np.ndarray, announced: bool = True) -> np.ndarray:
        """Queue ``[n, H, W, C]`` pixels; returns their ``[n, K]`` probabilities."""
        if announced:
            self.withdraw()
        if self._idle() and self._expected_s(len(pixels)) < INLINE_MAX_S:
            return self._run_inline(pixels)
        result: np.ndarray = await self._enqueue(pixels, None, len(pixels))
        return result

    def _expected_s(self, rows: int) -> float:
        """A model call's duration for ``rows`` images, as the last call went (inf: none yet)."""
        return self._last_call_s / self._last_rows * rows if self._last_rows else math.inf

    def _idle(self) -> bool:
        if self._queue or self._busy or self._announced:
            return False
        return self._in_progress() <= 1  # other requests received are about to queue

    def _run_inline(self, batch: np.ndarray) -> np.ndarray:
        if self._on_batch is not None:
            self._on_batch(len(batch))
        started = time.perf_counter()
        probs = self._predict(batch)
        self._last_rows, self._last_call_s = len(batch), time.perf_counter() - started
        return probs

    async def call(self, fn: Callable[[], Any], weight: int) -> Any:
        """Run ``fn()`` on a worker in queue order, alone; ``weight`` images of queue limit."""
        return await self._enqueue(None, fn, weight)

    async def _enqueue(
        self, pixels: np.ndarray | None, call: Callable[[], Any] | None, weight: int
    ) -> Any:
        if self.queued_images + weight > self._max_queued:
            raise Overloaded(f"{self.queued_images} images already queued")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(pixels, future, weight, call))
        self.queued_images += weight
        self._arrived.set()
        return await future  # cancelled (timeout, client gone): the dispatcher skips it

    async def _wait_for_items(self) -> None:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        start = loop.time()
        # Under steady load, the images of the last batch come back soon after it: while fewer
        # are queued, wait up to a small share of that batch's model time for them.
        expect_s = min(EXPECT_SHARE * self._last_call_s, EXPECT_MAX_S)
        while self.queued_images < self._max_batch:
            deadline = start + (self._max_wait_s if self._announced > 0 else 0.0)
            if self.queued_images < self._last_rows:
                deadline = max(deadline, start + expect_s)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Item]:
        items: list[_Item] = []
        rows = 0
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # cancelled by a request timeout or a client gone: skip it
                self._queue.popleft()
                self.queued_images -= item.weight
                continue
            if items and (item.call is not None or rows + item.weight > self._max_batch):
                break
            self._queue.popleft()
            self.queued_images -= item.weight
            items.append(item)
            rows += item.weight
            if item.call is not None:  # runs alone
                break
        return items

    async def _dispatch_forever(self) -> None:
        while True:
            await self._workers.acquire()
            try:
                await self._wait_for_items()
                items = self._take_batch()
            except BaseException:
                self._workers.release()
                raise
            if not items:
                self._workers.release()
                continue
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._run(items))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, items: list[_Item]) -> None:
        try:
            try:
                result: Any = await self._call(items)
            except Exception as exc:  # surfaced to every request of the batch
                result = exc
            finally:
                self._busy -= 1  # before its callers resume: the next request may run inline
            if isinstance(result, Exception):
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(result)
            elif items[0].call is not None:
                if not items[0].future.done():
                    items[0].future.set_result(result)
            else:
                start = 0
                for item in items:
                    if not item.future.done():
                        item.future.set_result(result[start : start + item.weight])
                    start += item.weight
        finally:
            self._workers.release()

    async def _call(self, items: list[_Item]) -> Any:
        """The model call (or the unbatchable call) for one batch, on a worker."""
        loop = asyncio.get_running_loop()
        if items[0].call is not None:
            return await loop.run_in_executor(self._executor, items[0].call)
        pixels = [i.pixels for i in items if i.pixels is not None]
        batch = pixels[0] if len(pixels) == 1 else np.concatenate(pixels)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        probs, seconds = await loop.run_in_executor(self._executor, self._timed, batch)
        self._last_rows, self._last_call_s = len(batch), seconds
        return probs

    def _timed(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """The model call and its own duration (the hand-offs around it not counted)."""
        started = time.perf_counter()
        return self._predict(batch), time.perf_counter() - started

    async def close(self) -> None:
        """Finish running batches, fail anything still queued, stop dispatching."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Overloaded("server shutting down"))
        self.queued_images = 0
