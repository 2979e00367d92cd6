"""Prepare on several instances: each decodes its share, the first merges; the output is
byte-identical to one instance's, with dedupe, quarantine and splits global."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pipelines.prepare.config import PrepareConfig
from pipelines.prepare.core import prepare
from pipelines.prepare.parts import Exchange
from pipelines.prepare.sources import list_source
from tests.fixtures_data import PLANT_MAX_PIXELS, PLANT_MIN_SIDE, plant_bad_files


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _share(raw: Path, dest: Path, index: int, count: int) -> None:
    """What ShardedByS3Key gives instance `index`: every count-th object in key order."""
    keys = sorted(
        p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file() or p.is_symlink()
    )
    for key in keys[index::count]:
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw / key, target, follow_symlinks=False)
    dest.mkdir(parents=True, exist_ok=True)


def _config(root: Path, host: str, hosts: list[str]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "resourceconfig.json").write_text(json.dumps({"current_host": host, "hosts": hosts}))
    (root / "processingjobconfig.json").write_text(json.dumps({"ProcessingJobName": "prep-1"}))
    return str(root / "resourceconfig.json")


def test_two_instances_write_what_one_writes(
    raw_mnist_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant_bad_files(raw_mnist_copy, tmp_path / "outside")
    (raw_mnist_copy / "3" / "link-outside.png").unlink()  # a share holds copies, not links
    (raw_mnist_copy / "8-linked-folder").unlink()
    common = {
        "min_images_per_class": 5,
        "shard_size": 70,
        "workers": 1,
        "chunk_size": 16,
        "max_pixels": PLANT_MAX_PIXELS,
        "min_side": PLANT_MIN_SIDE,
        "dataset": "mnist",
    }
    one = prepare(  # over a hashing listing; the instances hash their shares as they decode
        PrepareConfig(input=str(raw_mnist_copy), output=str(tmp_path / "one"), **common),  # type: ignore[arg-type]
        log=lambda _m: None,
        listing=list_source(str(raw_mnist_copy), None),
    )
    hosts = ["algo-1", "algo-2", "algo-3"]  # algo-3's share is empty: more hosts than needed
    exchange = tmp_path / "exchange"
    uploaded: list[str] = []
    put = Exchange.put

    def recorded_put(self: Exchange, rel: str, path: Path) -> None:
        uploaded.append(rel)
        put(self, rel, path)

    monkeypatch.setattr(Exchange, "put", recorded_put)
    results, logs = {}, []
    for i in (2, 1, 0):  # the others finish first; the first then merges
        share = tmp_path / f"share-{i}"
        if i < 2:
            _share(raw_mnist_copy, share, i, 2)
        else:
            share.mkdir()
        results[i] = prepare(
            PrepareConfig(
                input=str(share),
                output=str(tmp_path / f"out-{i}"),
                resource_config=_config(tmp_path / f"cfg-{i}", hosts[i], hosts),
                exchange=str(exchange),
                **common,  # type: ignore[arg-type]
            ),
            log=logs.append,
        )
    assert sum("share; contents hashed as decoded" in m for m in logs) == 3
    assert not (tmp_path / "out-1").exists() and not (tmp_path / "out-2").exists()
    assert _hashes(tmp_path / "out-0") == _hashes(tmp_path / "one")
    report = results[0].report
    assert report == one.report and report["used"] + len(report["quarantined"]) == report["total"]
    reasons = {q["reason"] for q in report["quarantined"]}
    assert {"duplicate", "duplicate_conflicting_labels", "truncated"} <= reasons
    assert not (exchange / "prep-1").exists()  # the parts are cleaned up
    # the others' parts went through the exchange, markers included; the first kept its own
    assert {rel.split("/")[1] for rel in uploaded} == {"algo-2", "algo-3"}
    assert {f"prep-1/{h}/part.json" for h in ("algo-2", "algo-3")} <= set(uploaded)
