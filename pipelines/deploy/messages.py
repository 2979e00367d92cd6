"""What the deploy step says when it does not deploy, and its error type."""

from __future__ import annotations

from collections.abc import Callable

Printer = Callable[[str], None]
PENDING_MESSAGE = "pending approval: not deployed"
REJECTED_MESSAGE = "rejected: not deployed"


class DeployError(RuntimeError):
    """The endpoint could not be (re)deployed; the message says why and where to look."""


def say(message: str) -> None:
    print(f"deploy: {message}", flush=True)
