"""Errors of the data package: one clear sentence each, never a partial output behind them."""

from __future__ import annotations


class DataError(RuntimeError):
    """Base of every error the data step reports to its user (exit status 2)."""


class SourceError(DataError):
    """The input as a whole cannot be listed or read (missing, unreadable, bad credentials)."""


class OutputError(DataError):
    """The output cannot be read or written (bad credentials, missing bucket, not a folder)."""


class PrepareError(DataError):
    """The input does not make a valid dataset (too few classes, a class under its minimum)."""
