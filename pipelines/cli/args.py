"""Argument helpers every `lepton` command shares."""

from __future__ import annotations

import argparse
from collections.abc import Iterable


def parse_pairs(pairs: Iterable[str], what: str = "KEY=VALUE") -> dict[str, str]:
    """`["A=1", "B=x=y"]` -> `{"A": "1", "B": "x=y"}` (the value may contain '='); a pair
    without '=' or without a name is an error; a name given twice is an error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"expected {what}, got {pair!r}")
        if key in out:
            raise ValueError(f"{key} is given twice ({key}={out[key]} and {pair})")
        out[key] = value
    return out


def add_param_option(parser: argparse.ArgumentParser) -> None:
    """`--param NAME=VALUE` (repeatable): a pipeline parameter by name."""
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a pipeline parameter by name (repeatable)",
    )
