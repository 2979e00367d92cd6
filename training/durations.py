"""How a duration reads in a progress line: training's epoch line and pipelines/progress.py.
No dependencies, so the pipelines' light processes import it without torch or Lightning."""

from __future__ import annotations


def time_left(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h14m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
