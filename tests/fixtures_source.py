"""A copy of the project's packages and image requirements (what a code bundle holds), for tests that build
definitions from it or edit it. Tests that edit a file restore it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.definition.names import IMAGE_REQUIREMENTS
from pipelines.imports import PROJECT_PACKAGES, SOURCE_ROOT


@pytest.fixture(scope="session")
def project_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PROJECT_PACKAGES:
        shutil.copytree(SOURCE_ROOT / package, root / package, ignore=ignore)
    requirements = root / IMAGE_REQUIREMENTS
    requirements.parent.mkdir(parents=True)
    shutil.copy2(SOURCE_ROOT / IMAGE_REQUIREMENTS, requirements)
    return root
