"""Small parts of the data package: config round trip, splits, duplicates, labels, manifests."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import data as data_command
from pipelines.prepare import decode, local_listing, reading, sources
from pipelines.prepare.config import PrepareConfig
from pipelines.prepare.core import prepare
from pipelines.prepare.importers import builtin_arrays, import_dataset
from pipelines.prepare.items import RawItem, clean_label
from pipelines.prepare.report import channel_mean_std, resolve_duplicates
from pipelines.prepare.sources import list_source
from pipelines.prepare.split import assign_split, split_indices
from tests.fixtures_data import encode
from training.serialize import from_args, to_args
from training.shards import SPLITS, channel_stats, read_manifest

REPO = Path(__file__).resolve().parents[2]


def parse(argv: list[str], positional: bool = False) -> PrepareConfig:
    """The entry point's parse (`--input I --output O ...`) or `lepton data prepare RAW OUT ...`."""
    if not positional:
        return from_args(PrepareConfig, argv)
    parser = argparse.ArgumentParser()
    data_command.register(parser.add_subparsers())
    return data_command.prepare_config(parser.parse_args(["data", "prepare", *argv]))


@pytest.mark.parametrize(
    "cfg",
    [
        PrepareConfig(input="s3://b/raw", output="/tmp/out"),
        PrepareConfig(
            input="in.jsonl",
            output="s3://b/ds",
            dataset="d",
            image_size=(32, 48),
            channels=3,
            split_fractions=(0.7, 0.2, 0.1),
            min_images_per_class=1,
            min_side=2,
            max_pixels=10**6,
            max_file_bytes=1000,
            shard_size=7,
            shard_max_bytes=12345,
            classes=("cat", "dög"),
            imbalance_ratio=3.5,
            workers=3,
            chunk_size=9,
            force=True,
            work_dir="/scratch",
        ),
    ],
)
def test_config_round_trips_through_args(cfg: PrepareConfig) -> None:
    assert parse(to_args(cfg)) == cfg


def test_positional_arguments_and_validation() -> None:
    cfg = parse(["raw", "out", "--image-size", "64", "--split", "0.5,0.5,0"], positional=True)
    assert (cfg.input, cfg.output, cfg.image_size) == ("raw", "out", (64, 64))
    assert cfg.dataset_name == "raw"
    with pytest.raises(ValueError, match="sum"):
        PrepareConfig(input="a", output="b", split_fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="channels"):
        PrepareConfig(input="a", output="b", channels=4)


def test_split_is_stable_and_follows_fractions() -> None:
    rng = np.random.default_rng(1)
    shas = [rng.bytes(32) for _ in range(20000)]
    splits = [assign_split(s, (0.8, 0.1, 0.1)) for s in shas]
    assert splits == [assign_split(s, (0.8, 0.1, 0.1)) for s in shas]
    share = {k: splits.count(k) / len(splits) for k in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.02 and abs(share["val"] - 0.1) < 0.01
    assert {assign_split(s, (1.0, 0.0, 0.0)) for s in shas[:500]} == {"train"}
    assert "val" not in {assign_split(s, (0.9, 0.0, 0.1)) for s in shas[:500]}
    # Prepare assigns them all at once: the same splits, edges and empty splits included.
    edge = np.frombuffer(bytes(32), np.uint8)
    table = np.stack([np.frombuffer(s, np.uint8) for s in shas] + [edge])
    for fractions in [(0.8, 0.1, 0.1), (1.0, 0.0, 0.0), (0.9, 0.0, 0.1), (0.0, 0.5, 0.5)]:
        want = [SPLITS.index(assign_split(s, fractions)) for s in [*shas, bytes(32)]]
        assert split_indices(table, fractions).tolist() == want


def test_duplicates_same_label_keep_first_conflicts_drop_all() -> None:
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    kept, dropped = resolve_duplicates(
        [("x/1", "x", a), ("x/2", "x", a), ("x/3", "x", b), ("y/1", "y", b), ("y/2", "y", c)]
    )
    assert kept == {0, 4}
    assert dropped[1][0] == "duplicate" and "x/1" in dropped[1][1]
    assert dropped[2][0] == dropped[3][0] == "duplicate_conflicting_labels"


def test_exact_channel_stats_match_numpy() -> None:
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (50, 7, 5, 3), dtype=np.uint8)
    flat = imgs.reshape(-1, 3).astype(np.int64)
    mean, std = channel_mean_std(flat.sum(0).tolist(), (flat * flat).sum(0).tolist(), len(flat))
    ref_mean, ref_std = channel_stats(imgs)
    assert np.allclose(mean, ref_mean, atol=1e-12) and np.allclose(std, ref_std, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_worker_channel_stats_are_exact_per_image_across_batches(channels: int) -> None:
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 256, (9, 6, 4, channels), dtype=np.uint8)
    stack[0] = 255  # the largest squares
    rows = np.array([0, -1, 1, 2, 3, -1, 4, 5, 6, 7, 8])  # two rejected items between kept ones
    n = len(rows)
    result = decode.ChunkResult(
        chunk=0,
        positions=np.arange(n),
        sha256=np.zeros((n, 32), np.uint8),
        read_sizes=np.full(n, -1, np.int64),
        rows=rows,
        sizes=np.zeros(n, np.int64),
        channel_sums=np.zeros((n, channels), np.int64),
        channel_sumsqs=np.zeros((n, channels), np.int64),
        rejected={},
    )
    decode._channel_stats(stack, result, batch_bytes=100)  # a few images per numpy call
    flat = stack.reshape(9, -1, channels).astype(np.int64)
    kept = rows >= 0
    assert np.array_equal(result.channel_sums[kept], flat.sum(1))
    assert np.array_equal(result.channel_sumsqs[kept], (flat * flat).sum(1))
    assert not result.channel_sums[~kept].any() and not result.channel_sumsqs[~kept].any()


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("cat", "cat"),
        ("cafe\u0301", "caf\u00e9"),
        ("猫", "猫"),
        ("..", None),
        (".", None),
        ("", None),
        (" cat", None),
        ("a\u200bb", None),
        ("a\x00", None),
        ("a/b", None),
        (3, None),
    ],
)
def test_clean_label(raw: object, ok: str | None) -> None:
    assert clean_label(raw) == ok


def test_jsonl_manifest_input(raw_mnist_copy: Path, tmp_path: Path) -> None:
    keys = sorted(p.relative_to(raw_mnist_copy).as_posix() for p in raw_mnist_copy.rglob("*.png"))
    lines = [json.dumps({"source-ref": f"raw/{k}", "class": k.split("/")[0]}) for k in keys[:60]]
    lines[1] = json.dumps(
        {"source-ref": f"raw/{keys[1]}", "gt-job-metadata": {"class-name": "0"}}
    )  # Ground Truth style
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            [
                *lines,
                "{not json",
                json.dumps({"source-ref": "/etc/passwd", "class": "0"}),
                json.dumps({"source-ref": "raw/../../../../etc/hostname.png", "class": "0"}),
                json.dumps({"source-ref": f"raw/{keys[70]}"}),
                "",
            ]
        )
    )
    listing = list_source(str(manifest), None)
    reasons = {it.key: it.issue[0] for it in listing.items if it.issue}
    assert sorted(reasons.values()) == [
        "invalid_manifest_line",
        "unknown_label",
        "unsafe_key",
        "unsafe_key",
    ]
    result = prepare(
        PrepareConfig(input=str(manifest), output=str(tmp_path / "out"), min_images_per_class=5),
        log=lambda _m: None,
    )
    assert result.report["used"] == 60 and result.report["total"] == 64
    assert result.manifest["classes"] == ["0", "1"]


def test_import_builtin_to_folder_then_prepare(tmp_path: Path) -> None:
    n = import_dataset("digits", str(tmp_path / "raw"), None, limit=200, log=lambda _m: None)
    assert n == 200 and len(list((tmp_path / "raw").rglob("*.png"))) == 200
    images, labels = builtin_arrays("mnist-5k")
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and len(labels) == 5000
    again = import_dataset(str(tmp_path / "raw"), str(tmp_path / "copy"), None, log=lambda _m: None)
    assert again == 200
    result = prepare(
        PrepareConfig(
            input=str(tmp_path / "copy"),
            output=str(tmp_path / "ds"),
            image_size=(8, 8),
            min_images_per_class=5,
        ),
        log=lambda _m: None,
    )
    assert len(result.manifest["classes"]) == 10 and result.report["quarantined"] == []


@pytest.mark.parametrize("how", [["pipelines/prepare/step.py"], ["-m", "pipelines.prepare.step"]])
def test_step_entry_point_runs_both_ways(
    raw_mnist_dir: Path, tmp_path: Path, how: list[str]
) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        *how,
        "--input",
        str(raw_mnist_dir),
        "--output",
        str(out),
        "--min-images-per-class",
        "5",
        "--workers",
        "2",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "done:" in done.stderr and read_manifest(out)["dataset"] == "mnist"
    bad = subprocess.run(
        [*cmd[:-4], "--min-images-per-class", "1000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "under the minimum of 1000" in bad.stderr


class FakeS3:
    """Just enough of an S3 client for listing (pages of 1,000) and reading, AWS-style keys."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get_paginator(self, _name: str) -> FakeS3:
        return self

    def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, object]]:  # noqa: N803
        keys = sorted(k for k in self.objects if k.startswith(Prefix))
        return [
            {
                "Contents": [
                    {
                        "Key": k,
                        "Size": len(self.objects[k]),
                        "ETag": f'"{hashlib.md5(self.objects[k]).hexdigest()}"',
                    }
                    for k in keys[i : i + 1000]
                ]
            }
            for i in range(0, len(keys), 1000)
        ]

    def get_object(self, Bucket: str, Key: str) -> dict[str, object]:  # noqa: N803
        data = self.objects[Key]
        return {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "Body": io.BytesIO(data)}


def test_aws_style_hostile_keys_never_escape(
    raw_mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = {
        f"raw/{p.relative_to(raw_mnist_dir).as_posix()}": p.read_bytes()
        for p in raw_mnist_dir.rglob("*.png")
    }
    hostile = [
        "raw/../escape.png",
        "raw/3/../../../../tmp/up.png",
        "raw/./3/dot.png",
        "raw//abs.png",
        "raw/..\\x.png",
        "raw/3/./../x.png",
    ]
    for n, key in enumerate(hostile):
        objects[key] = encode(Image.new("L", (9, 9), 50 + n), "PNG")
    fake = FakeS3(objects)
    monkeypatch.setattr(sources, "make_client", lambda _s: fake)
    monkeypatch.setattr(decode, "make_client", lambda _s: fake)
    out = tmp_path / "work" / "out"
    result = prepare(
        PrepareConfig(input="s3://b/raw", output=str(out), workers=1, min_images_per_class=5),
        log=lambda _m: None,
    )
    got = {q["key"]: q["reason"] for q in result.report["quarantined"]}
    assert set(got.values()) == {"unknown_label"} and len(got) == len(hostile)
    assert result.manifest["classes"] == [str(d) for d in range(10)]
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert files == sorted(
        [
            "work",
            "work/out",
            "work/out/manifest.json",
            "work/out/quality_report.json",
            *(f"work/out/{s['file']}" for s in result.manifest["shards"]),
        ]
    )


def test_parallel_local_listing_matches_the_sequential_one(
    raw_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequential = list_source(str(raw_mnist_dir), None)
    monkeypatch.setattr(local_listing, "PARALLEL_LISTING", 10)  # 300 files: the process pool path
    parallel = list_source(str(raw_mnist_dir), None)
    assert parallel.items == sequential.items and len(parallel.items) == 300


def test_a_local_files_listed_hash_is_what_its_bytes_hash_to(tmp_path: Path) -> None:
    """decode_chunk takes a local file's sha256 from its listing (read_item has checked the
    bytes against it) instead of hashing them again; S3 objects have no such hash."""
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"some bytes")
    (item,) = list_source(str(tmp_path), None).items
    assert reading.checked_sha256(item) == hashlib.sha256(b"some bytes").digest()
    assert reading.read_item(item, None) == b"some bytes"
    s3 = RawItem("cat/a.png", "cat", "s3://b/cat/a.png", 10, "0123abcd")
    assert reading.checked_sha256(s3) is None
