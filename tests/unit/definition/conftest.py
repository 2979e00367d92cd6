"""Fixtures shared by the pipeline definition tests (test_definition_*.py; helpers in
helpers.py), scoped to this package. The definition of `cfg` is built once per test process
(`built_once`) and read by several files; `no_network` and the fixtures that need it are per
module, so each module that reads the definition runs with the network refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.definition.build import BuiltDefinition
from pipelines.definition.config import PipelineConfig
from tests.unit.definition.helpers import build_offline, definition_config, offline


@pytest.fixture(scope="module")
def no_network() -> Iterator[list[str]]:
    """Any socket connection, DNS lookup or botocore HTTP send fails the build (and is logged)."""
    with offline() as attempts:
        yield attempts


@pytest.fixture(scope="module")
def source_root(project_source: Path) -> Path:
    return project_source


@pytest.fixture(scope="module")
def cfg() -> PipelineConfig:
    return definition_config()


@pytest.fixture(scope="session")
def built_once(project_source: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltDefinition:
    """The definition of `definition_config()`, built offline once per test process (it holds
    no patch and no state: nothing is left to tear down). Treat it as read-only."""
    return build_offline(definition_config(), project_source, tmp_path_factory.mktemp("staging"))


@pytest.fixture(scope="module")
def built(no_network: list[str], built_once: BuiltDefinition) -> BuiltDefinition:
    assert no_network == []
    return built_once


@pytest.fixture(scope="module")
def d(built: BuiltDefinition) -> dict[str, Any]:
    return built.parsed()
