"""The tracking bounds a training job takes from its environment (training/env.py)."""

from __future__ import annotations

import os

import pytest

from training.env import bound_mlflow_requests, read_env


def test_defaults_bound_every_mlflow_request() -> None:
    env = read_env({})
    # MLflow's own defaults (7 retries, 120 s) let one request block ~4 min (issue 13)
    assert (env.mlflow_http_max_retries, env.mlflow_http_timeout_s) == (2, 20)
    assert env.tracking_retry_window_s == 120.0


def test_the_environment_overrides_them(monkeypatch: pytest.MonkeyPatch) -> None:
    env = read_env(
        {
            "LEPTON_TRACKING_RETRY_S": "7.5",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        }
    )
    assert (env.tracking_retry_window_s, env.mlflow_http_max_retries) == (7.5, 0)
    # MLflow's own defaults, restored (or removed) after the test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    bound_mlflow_requests(env)
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    assert (MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_TIMEOUT.get()) == (0, 5)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"


def test_a_bad_window_is_reported() -> None:
    with pytest.raises(ValueError, match="LEPTON_TRACKING_RETRY_S"):
        read_env({"LEPTON_TRACKING_RETRY_S": "soon"})
