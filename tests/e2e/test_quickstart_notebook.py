"""notebooks/quickstart.ipynb, executed top to bottom by a real Jupyter kernel.

Runs after test_pipeline_local.py on the same session stack with the same small configuration,
so its pipeline run is mostly served from the step cache.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pipelines.deploy.local import stop_local_endpoint
from pipelines.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_notebook_runs(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel inherits this environment: the session stack, and this venv's python first.
    for key, value in {
        "LEPTON_MODE": "local",
        "LEPTON_STATE_DIR": str(stack_settings.state_dir),
        "LEPTON_S3_PORT": str(stack_settings.s3_port),
        "LEPTON_MLFLOW_PORT": str(stack_settings.mlflow_port),
        "LEPTON_ENDPOINT_PORT": str(stack_settings.endpoint_port),
        # A registry of its own: the gate must not depend on champions earlier tests made.
        "LEPTON_MODEL_NAME": "notebook-classifier",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)

    nb = nbformat.read(REPO_ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    try:
        NotebookClient(
            nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(REPO_ROOT)}}
        ).execute()
    finally:
        stop_local_endpoint(stack_settings, out=lambda _m: None)

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    line = next(x for x in text.splitlines() if x.startswith("NOTEBOOK_RESULT "))
    result = json.loads(line.removeprefix("NOTEBOOK_RESULT "))
    assert result["status"] == "Succeeded"
    assert result["model_version"] is not None
    assert result["sent"] == 8 and result["correct"] >= 6
    assert result["monitor"] == {"held-out": "no_violations", "inverted": "violations"}
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # the DAG, the metrics, the classified images, two distributions
