"""The runner emulates ProcessingInstanceCount instances: each with its own /opt/ml and its
share of a ShardedByS3Key input, outputs of all uploaded; Prepare's dataset is byte-identical
for one instance and two. (Local folders stand in for S3: the runner's transfers take both.)"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from pipelines.runner import jobs
from tests.fixtures_model import REPO_ROOT


def _request(raw: Path, out: Path, exchange: Path, instances: int) -> dict[str, Any]:
    """A resolved CreateProcessingJob request as the definition's Prepare step makes it."""
    return {
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": instances, "InstanceType": "ml.m5.xlarge"}
        },
        "AppSpecification": {
            "ContainerEntrypoint": ["python3", "-m", "pipelines.prepare.step"],
            "ContainerArguments": [
                "--input",
                "/opt/ml/processing/input/raw",
                "--output",
                "/opt/ml/processing/output/dataset",
                "--min_images_per_class",
                "5",
                "--shard_size",
                "60",
                "--workers",
                "1",
                "--dataset",
                "mnist",
                "--resource_config",
                "/opt/ml/config/resourceconfig.json",
                "--exchange",
                str(exchange),
            ],
        },
        "ProcessingInputs": [
            {
                "InputName": "raw",
                "S3Input": {
                    "S3Uri": str(raw),
                    "LocalPath": "/opt/ml/processing/input/raw",
                    "S3DataDistributionType": "ShardedByS3Key",
                },
            }
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "dataset",
                    "S3Output": {
                        "S3Uri": str(out),
                        "LocalPath": "/opt/ml/processing/output/dataset",
                    },
                }
            ]
        },
    }


def _run(raw: Path, tmp: Path, instances: int) -> tuple[Path, list[str]]:
    out, work = tmp / f"dataset-{instances}", tmp / f"exec-{instances}" / "steps" / "Prepare"
    work.mkdir(parents=True)
    echoed: list[str] = []
    job = jobs.JobEnv(
        env={"PYTHONPATH": str(REPO_ROOT)}, s3=None, echo=echoed.append, python=Path(sys.executable)
    )
    jobs.run_processing("Prepare", _request(raw, out, tmp / "exchange", instances), work, job)
    return out, echoed


def test_two_instances_prepare_what_one_prepares(raw_mnist_dir: Path, tmp_path: Path) -> None:
    one, _ = _run(raw_mnist_dir, tmp_path, 1)
    many, echoed = _run(raw_mnist_dir, tmp_path, 2)
    hashes = [
        {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}
        for d in (one, many)
    ]
    assert hashes[0] == hashes[1] and "manifest.json" in hashes[0]
    assert json.loads((one / "quality_report.json").read_text())["used"] == 300
    shares = [line for line in echoed if "input raw" in line]
    assert len(shares) == 2 and all("150 files, share" in line for line in shares), shares
    work = tmp_path / "exec-2" / "steps" / "Prepare"
    config = json.loads((work / "instances/algo-2/opt-ml/config/resourceconfig.json").read_text())
    assert config == {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}
    assert (work / "algo-2.log").read_text().count("part written") == 1


def test_a_rerun_starts_from_a_fresh_container(raw_mnist_dir: Path, tmp_path: Path) -> None:
    """`lepton pipeline resume` runs a step again in its work folder: what an interrupted
    attempt left there (a half-downloaded input file, a stale output) is neither prepared nor
    uploaded, as a new SageMaker container would not have it."""
    out, _ = _run(raw_mnist_dir, tmp_path, 1)
    work = tmp_path / "exec-1" / "steps" / "Prepare"
    raw = work / "opt-ml/processing/input/raw"
    (raw / "3" / "00042.png.part").write_bytes(b"\x89PNG\r\n\x1a\n half")  # download cut off
    (work / "opt-ml/processing/output/dataset/stale.bin").write_bytes(b"an earlier attempt's")
    echoed: list[str] = []
    job = jobs.JobEnv(
        env={"PYTHONPATH": str(REPO_ROOT)}, s3=None, echo=echoed.append, python=Path(sys.executable)
    )
    jobs.run_processing(
        "Prepare", _request(raw_mnist_dir, out, tmp_path / "exchange", 1), work, job
    )
    assert not (raw / "3" / "00042.png.part").exists()
    assert not (out / "stale.bin").exists()
    report = json.loads((out / "quality_report.json").read_text())
    assert report["total"] == report["used"] == 300 and not report["quarantined"]
