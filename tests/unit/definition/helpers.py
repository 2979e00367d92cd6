"""Helpers for the pipeline definition tests (test_definition_*.py; fixtures in conftest.py):
the config they build, a network block for offline builds and readers of the definition's
step graph."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipelines.definition.build import BuiltDefinition, build_definition
from pipelines.definition.config import PipelineConfig, aws_default
from pipelines.definition.parameters import PARAMETERS

ROLE = "arn:aws:iam::123456789012:role/lepton-pipeline"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/lepton:0123abcd"
PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)


class NetworkUsed(AssertionError):
    pass


def definition_config() -> PipelineConfig:
    """The config of the shared definition (the `cfg` fixture)."""
    return aws_default(
        ROLE, "lepton-test-bucket", "eu-west-1", epochs=4, lr_peak=0.002, image_uri=IMAGE
    )


@contextmanager
def offline() -> Iterator[list[str]]:
    """Any socket connection, DNS lookup or botocore HTTP send fails the build (and is logged)."""
    attempts: list[str] = []

    def refuse(what: str) -> Any:
        def _refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{what}{args[1:] if what == 'connect' else args[:1]}")
            raise NetworkUsed(f"network use while building offline: {what} {args}")

        return _refuse

    import botocore.httpsession

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse("connect"))
        mp.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        mp.setattr(botocore.httpsession.URLLib3Session, "send", refuse("botocore-send"))
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        yield attempts


def build_offline(cfg: PipelineConfig, source_root: Path, staging_root: Path) -> BuiltDefinition:
    """`build_definition` under `offline()`; fails if the build tried to use the network."""
    with offline() as attempts:
        result = build_definition(cfg, source_root=source_root, staging_root=staging_root)
    assert attempts == []
    return result


def all_steps(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every step by name, those in Condition branches (at any depth) included."""
    out = {}
    pending = list(d["Steps"])
    while pending:
        step = pending.pop(0)
        out[step["Name"]] = step
        if step["Type"] == "Condition":
            pending += step["Arguments"]["IfSteps"] + step["Arguments"]["ElseSteps"]
    return out


def referenced_steps(obj: Any) -> set[str]:
    text = json.dumps(obj)
    return set(re.findall(r'"Get": "Steps\.([A-Za-z0-9-]+)\.', text))
