"""Progress lines (pipelines/progress.py): how far, how fast, about how long is left, at most
one line every few seconds, read from a clock the test steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipelines import progress
from pipelines.progress import Progress
from training.durations import time_left


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """`clock.now` is what time.perf_counter() returns inside pipelines.progress."""
    now = SimpleNamespace(now=100.0)
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: now.now))
    return now


def test_time_left_reads_as_seconds_minutes_or_hours() -> None:
    cases = {0: "0s", -3: "0s", 59.4: "59s", 61: "1m01s", 3599: "59m59s", 3600: "1h00m"}
    cases[8040] = "2h14m"
    assert {s: time_left(s) for s in cases} == cases


def test_a_line_every_period_with_the_rate_and_time_left_then_one_at_the_end(
    clock: SimpleNamespace,
) -> None:
    lines: list[str] = []
    p = Progress(lines.append, "decoded", 1000, "images", every_s=2.0)
    clock.now += 1.0
    p.update(100)  # 1 s in: too soon
    clock.now += 1.5
    p.update(250, ", 3 rejected")  # 2.5 s in: 100 images/s, 750 left
    clock.now += 1.0
    p.update(400)  # 1 s after the last line: too soon
    clock.now += 6.5
    p.update(1000)  # the end: always, without a time left
    assert lines == [
        "decoded 250/1000 (25%), 3 rejected, 100 images/s, about 8s left",
        "decoded 1000/1000 (100%), 100 images/s",
    ]


def test_quiet_if_short_says_nothing_for_a_short_run_and_ends_a_long_one(
    clock: SimpleNamespace,
) -> None:
    short: list[str] = []
    p = Progress(short.append, "fetched", 10, "objects", every_s=5.0, quiet_if_short=True)
    for done in range(1, 11):
        clock.now += 0.1
        p.update(done)
    assert short == []
    long: list[str] = []
    clock.now = 100.0
    p = Progress(long.append, "fetched", 3000, "objects", every_s=5.0, quiet_if_short=True)
    for done in range(1, 3001):
        clock.now = 100.0 + done / 200  # 200 objects/s: a line at 5 s, 10 s, the end at 15 s
        p.update(done)
    assert [line.split(",")[0] for line in long] == [
        "fetched 1000/3000 (33%)",
        "fetched 2000/3000 (66%)",
        "fetched 3000/3000 (100%)",
    ]
    assert long[0].endswith(", 200 objects/s, about 10s left") and "left" not in long[-1]
