"""The sagemaker-mlflow plugin's header provider against a server that is not an ARN."""

from __future__ import annotations

import logging


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_client_for_a_plain_server_logs_no_plugin_errors() -> None:
    from mlflow.tracking.request_header.registry import resolve_request_headers

    from training.tracking import _drop_plugin_warning, mlflow_client

    logger = logging.getLogger("mlflow.tracking.request_header.registry")
    logger.removeFilter(_drop_plugin_warning)  # installed by an earlier test in this process
    records = _Records()
    logger.addHandler(records)
    try:
        resolve_request_headers()  # the plugin fails on a non-ARN tracking URI...
        if not any("list index out of range" in m for m in records.messages):
            raise AssertionError("the plugin no longer fails: drop the filter and this test")
        records.messages.clear()
        mlflow_client("http://127.0.0.1:9")  # ...and any client the project makes silences it
        resolve_request_headers()
        resolve_request_headers()
        assert records.messages == []
    finally:
        logger.removeHandler(records)
