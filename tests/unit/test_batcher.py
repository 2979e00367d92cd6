"""MicroBatcher: where model calls run (the loop for a fast model when idle, else a worker)
and that batching under load is kept."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference.batcher import INLINE_MAX_S, MicroBatcher


class Model:
    """Records the thread and batch size of each call; ``delay_s`` per call."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s, self.fail = delay_s, fail
        self.calls: list[tuple[int, int]] = []  # (thread id, rows)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append((threading.get_ident(), len(batch)))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise ValueError("model failed")
        return np.repeat(batch.reshape(len(batch), -1)[:, :1].astype(np.float32), 2, axis=1)


def _run(model: Model, scenario) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(
                model, pool, workers=1, max_batch=32, max_wait_s=0.002, max_queued_images=1000
            )
            batcher.start()
            try:
                await scenario(batcher, threading.get_ident())
            finally:
                await batcher.close()

    asyncio.run(main())


def _pixels(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 2, 2, 1), value, dtype=np.uint8)


def test_a_fast_model_runs_on_the_loop_once_measured() -> None:
    model = Model()

    async def scenario(batcher: MicroBatcher, loop_thread: int) -> None:
        for value in range(5):
            probs = await batcher.submit(_pixels(value), announced=False)
            assert probs[0, 0] == value
        threads = [thread for thread, _ in model.calls]
        assert threads[0] != loop_thread  # not measured yet: a worker
        assert threads[2:] == [loop_thread] * 3  # (the 2nd too, unless the 1st was preempted)

    _run(model, scenario)


def test_a_slow_model_always_runs_on_a_worker() -> None:
    model = Model(delay_s=INLINE_MAX_S * 3)

    async def scenario(batcher: MicroBatcher, loop_thread: int) -> None:
        for value in range(3):
            await batcher.submit(_pixels(value), announced=False)
        assert loop_thread not in {thread for thread, _ in model.calls}

    _run(model, scenario)


def test_a_request_too_big_for_the_loop_goes_to_a_worker() -> None:
    model = Model()

    async def scenario(batcher: MicroBatcher, loop_thread: int) -> None:
        await batcher.submit(_pixels(0), announced=False)
        await batcher.submit(_pixels(1), announced=False)
        per_image = batcher._expected_s(1)
        rows = int(INLINE_MAX_S / per_image) + 1 if per_image > 0 else 10**9
        await batcher.submit(_pixels(2, min(rows, 100_000)), announced=False)
        assert model.calls[1][0] == loop_thread and model.calls[2][0] != loop_thread

    _run(model, scenario)


def test_concurrent_requests_are_still_batched_on_a_worker() -> None:
    model = Model()

    async def scenario(batcher: MicroBatcher, loop_thread: int) -> None:
        await batcher.submit(_pixels(0), announced=False)  # measured: the model is fast
        model.delay_s = 0.02  # now each call takes a while, so the others queue behind it
        for _ in range(16):
            batcher.announce()
        results = await asyncio.gather(*(batcher.submit(_pixels(v)) for v in range(16)))
        assert [int(r[0, 0]) for r in results] == list(range(16))
        later = model.calls[1:]
        assert loop_thread not in {thread for thread, _ in later}
        assert len(later) < 16 and sum(rows for _, rows in later) == 16

    _run(model, scenario)


def test_a_failing_inline_call_raises_to_its_caller() -> None:
    model = Model()

    async def scenario(batcher: MicroBatcher, loop_thread: int) -> None:
        await batcher.submit(_pixels(0), announced=False)
        model.fail = True
        with pytest.raises(ValueError, match="model failed"):
            await batcher.submit(_pixels(1), announced=False)
        assert model.calls[-1][0] == loop_thread

    _run(model, scenario)


def test_no_inline_call_while_the_server_has_other_requests() -> None:
    model, others = Model(), [2]

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(
                model,
                pool,
                workers=1,
                max_batch=32,
                max_wait_s=0.0,
                max_queued_images=1000,
                in_progress=lambda: others[0],
            )
            batcher.start()
            loop_thread = threading.get_ident()
            for value in range(3):
                await batcher.submit(_pixels(value), announced=False)
            others[0] = 1  # alone again: the measured fast model runs on the loop
            await batcher.submit(_pixels(3), announced=False)
            await batcher.close()
        assert [thread == loop_thread for thread, _ in model.calls] == [False] * 3 + [True]

    asyncio.run(main())
