"""Batch inference: every image under a folder or S3 prefix classified by a model the project
trained, as the endpoint would classify it; bad files reported per key; a rerun skips what is
done; `lepton batch predict` runs the pipeline's own Batch step in the step environment."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from pipelines.batch.config import BatchConfig
from pipelines.batch.core import OUT_SUFFIX, REPORT, run_batch
from pipelines.settings import Settings
from pipelines.storage import s3_client

BAD = {
    "bad/empty.png": (b"", "empty"),
    "bad/garbage.png": (bytes(range(256)) * 3, "undecodable"),
    "bad/notes.txt": (b"not an image", "unknown_extension"),
}


def _digits(root: Path, count: int) -> dict[str, int]:
    """PNGs of sklearn's digits in nested folders; returns {key: true label}."""
    from sklearn.datasets import load_digits

    from pipelines.prepare.importers import png_bytes

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    truth = {}
    for i in range(count):
        key = f"part-{i % 3}/sub/{i:04d}.png"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(png_bytes(images[i]))
        truth[key] = int(digits.target[i])
    for key, (data, _) in BAD.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return truth


def _records(out: Path) -> dict[str, dict]:
    return {
        p.relative_to(out).as_posix().removesuffix(OUT_SUFFIX): json.loads(p.read_text())
        for p in out.rglob(f"*{OUT_SUFFIX}")
    }


def test_folder_batch_matches_the_endpoint_and_reruns_skip_done_keys(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    from inference.predictor import Predictor

    src, out = tmp_path / "in", tmp_path / "out"
    truth = _digits(src, 150)
    cfg = BatchConfig(
        input=str(src),
        output=str(out),
        model=str(trained_model_dir),
        model_version="v-test",
        batch_size=16,
        workers=2,
    )
    report = run_batch(cfg, log=lambda _m: None)
    assert (report.total, report.predicted, report.skipped) == (len(truth) + len(BAD), 150, 0)
    assert {f["key"]: f["reason"] for f in report.failed} == {k: r for k, (_, r) in BAD.items()}

    records = _records(out)
    assert set(records) == set(truth) | set(BAD)
    for key, (_, reason) in BAD.items():
        assert records[key]["error"] == reason and records[key]["model"] == "v-test"
    # The same answers the endpoint's code gives for the same bytes, in one model call each.
    predictor = Predictor.load(trained_model_dir)
    keys = sorted(truth)[:20]
    served = predictor.predict_images([(src / k).read_bytes() for k in keys], k=3)
    for key, top in zip(keys, served, strict=True):
        rec = records[key]
        assert rec["key"] == key and rec["model"] == "v-test"
        assert [t["label"] for t in rec["top_k"]] == [lab for lab, _ in top]
        assert rec["score"] == pytest.approx(top[0][1], abs=1e-5)
    accuracy = np.mean([records[k]["label"] == str(v) for k, v in truth.items()])
    assert accuracy > 0.7, accuracy  # the tiny model trained for seconds: far above 10% chance
    saved = json.loads((out / REPORT).read_text())
    assert (saved["predicted"], saved["failed"], saved["skipped"]) == (150, len(BAD), 0)

    # A rerun does nothing; losing one result redoes exactly that key.
    again = run_batch(cfg, log=lambda _m: None)
    assert (again.predicted, len(again.failed), again.skipped) == (0, 0, len(truth) + len(BAD))
    lost = sorted(truth)[7]
    before = (out / (lost + OUT_SUFFIX)).read_text()
    (out / (lost + OUT_SUFFIX)).unlink()
    third = run_batch(cfg, log=lambda _m: None)
    assert (third.predicted, third.skipped) == (1, len(truth) + len(BAD) - 1)
    assert (out / (lost + OUT_SUFFIX)).read_text() == before


@pytest.mark.slow
def test_lepton_batch_predict_runs_the_batch_step_on_s3(
    stack_settings: Settings, trained_model_dir: Path, tmp_path: Path
) -> None:
    from pipelines.batch.job import run_local
    from pipelines.register import registry

    settings = stack_settings.with_overrides(registered_model_name=f"batch-{uuid.uuid4().hex[:8]}")
    version = registry.register_model(settings, trained_model_dir, None, {}, 0.9).version
    registry.approve(settings, version)
    src = tmp_path / "in"
    truth = _digits(src, 40)
    s3 = s3_client(settings)
    run = uuid.uuid4().hex[:8]
    for path in src.rglob("*"):
        if path.is_file():
            key = f"batch-in/{run}/{path.relative_to(src).as_posix()}"
            s3.put_object(Bucket=settings.data_bucket, Key=key, Body=path.read_bytes())
    input_uri = f"s3://{settings.data_bucket}/batch-in/{run}/"
    output_uri = f"s3://{settings.artifact_bucket}/batch-out/{run}/"
    lines: list[str] = []
    ref = f"models:/{settings.registered_model_name}@champion"
    report = run_local(settings, input_uri, output_uri, ref, {"top_k": 2}, out=lines.append)

    assert (report["predicted"], report["failed"], report["skipped"]) == (40, len(BAD), 0)
    listed = s3.list_objects_v2(Bucket=settings.artifact_bucket, Prefix=f"batch-out/{run}/")
    keys = {o["Key"].removeprefix(f"batch-out/{run}/") for o in listed["Contents"]}
    assert keys == {k + OUT_SUFFIX for k in [*truth, *BAD]} | {REPORT}
    key = sorted(truth)[0]
    body = s3.get_object(Bucket=settings.artifact_bucket, Key=f"batch-out/{run}/{key}.out")
    record = json.loads(body["Body"].read())
    assert record["model"] == f"models:/{settings.registered_model_name}/{version}"
    assert len(record["top_k"]) == 2
    assert any("Batch" in line and "output" not in line for line in lines)

    rerun = run_local(settings, input_uri, output_uri, ref, {}, out=lines.append)
    assert (rerun["predicted"], rerun["skipped"]) == (0, 40 + len(BAD))
