"""Progress lines for long loops (Prepare's decode pass, a job's input download): how far,
how fast and about how long is left, at most one line every few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable

from training.durations import time_left


class Progress:
    """``update(done)`` logs ``<what> done/total (pct%)<detail>, <rate> <unit>/s, about <t>
    left`` when `every_s` passed since the last line, and once at the end (without the time
    left; with `quiet_if_short`, only if a line came before). The rate is the mean since the
    start."""

    def __init__(
        self,
        log: Callable[[str], None],
        what: str,
        total: int,
        unit: str,
        every_s: float = 2.0,
        quiet_if_short: bool = False,
    ) -> None:
        self.log, self.what, self.total, self.unit, self.every_s = log, what, total, unit, every_s
        self.start = self.last = time.perf_counter()
        self.quiet = quiet_if_short  # until a first line is logged

    def update(self, done: int, detail: str = "") -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and (done < self.total or self.quiet):
            return
        self.last, self.quiet = now, False
        rate = done / max(now - self.start, 1e-9)
        left = ""
        if done < self.total:
            left = f", about {time_left((self.total - done) / rate)} left" if rate else ""
        percent = 100 * done // max(1, self.total)
        self.log(
            f"{self.what} {done}/{self.total} ({percent}%){detail}, {rate:.0f} {self.unit}/s{left}"
        )
