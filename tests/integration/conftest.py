"""Fixtures shared by the endpoint hardening tests (test_server_*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.predictor import Predictor


@pytest.fixture()
def own_predictor(trained_model_dir: Path) -> Predictor:
    """A predictor of its own, free to be patched by the test."""
    return Predictor.load(trained_model_dir, threads=1)
