"""prepare and import against a real SeaweedFS through the project's S3 settings."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from pipelines.prepare.config import PrepareConfig
from pipelines.prepare.core import prepare
from pipelines.prepare.errors import OutputError, SourceError
from pipelines.prepare.importers import import_dataset
from pipelines.prepare.sources import list_source
from pipelines.settings import Credentials, Settings
from pipelines.storage import s3_client
from tests.fixtures_data import encode
from training.shards import load_split, read_manifest

REPO = Path(__file__).resolve().parents[2]


def quiet(_msg: str) -> None:
    pass


def keys_under(settings: Settings, prefix: str) -> list[str]:
    client = s3_client(settings)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=settings.data_bucket, Prefix=prefix
    )
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def download(settings: Settings, prefix: str, dest: Path) -> None:
    client = s3_client(settings)
    dest.mkdir(parents=True, exist_ok=True)
    for key in keys_under(settings, prefix):
        client.download_file(settings.data_bucket, key, str(dest / key.rsplit("/", 1)[-1]))


@pytest.fixture(scope="module")
def digits_uri(s3_settings: Settings) -> str:
    """All 1,797 sklearn digits as an ImageFolder in SeaweedFS: more than one listing page."""
    uri = f"s3://{s3_settings.data_bucket}/raw/digits"
    assert import_dataset("digits", uri, s3_settings, log=quiet) == 1797
    return uri


def test_prefix_over_1000_objects_listed_completely(s3_settings: Settings, digits_uri: str) -> None:
    listing = list_source(digits_uri, s3_settings)
    assert len(listing.items) == 1797
    assert len({it.key for it in listing.items}) == 1797
    assert all(it.issue is None and it.etag for it in listing.items)


def test_s3_to_s3_then_up_to_date(s3_settings: Settings, digits_uri: str, tmp_path: Path) -> None:
    out = f"s3://{s3_settings.data_bucket}/datasets/digits"
    cfg = PrepareConfig(input=digits_uri, output=out, image_size=(8, 8), shard_size=500)
    result = prepare(cfg, s3_settings, log=quiet)
    assert not result.skipped and result.report["used"] + len(result.report["quarantined"]) == 1797
    names = {k.rsplit("/", 1)[-1] for k in keys_under(s3_settings, "datasets/digits/")}
    assert names == {s["file"] for s in result.manifest["shards"]} | {
        "manifest.json",
        "quality_report.json",
    }
    local = tmp_path / "copy"
    download(s3_settings, "datasets/digits/", local)
    assert read_manifest(local) == result.manifest
    images, labels = load_split(local, "train")  # verifies every shard's sha256
    assert (
        images.shape[1:] == (8, 8, 1) and len(labels) == result.manifest["splits"]["train"]["count"]
    )
    msgs: list[str] = []
    assert prepare(cfg, s3_settings, log=msgs.append).skipped
    assert any("up to date" in m for m in msgs)


@pytest.fixture(scope="module")
def mnist_uri(s3_settings: Settings, raw_mnist_dir: Path) -> str:
    uri = f"s3://{s3_settings.data_bucket}/raw/mnist"
    assert import_dataset(str(raw_mnist_dir), uri, s3_settings, log=quiet) == 300
    return uri


def test_step_reads_s3_with_default_chain(
    s3_settings: Settings, mnist_uri: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LEPTON_"))}
    env.update(s3_settings.s3_env())  # what the local runner gives a step
    out = tmp_path / "ds"
    cmd = [
        sys.executable,
        "-m",
        "pipelines.prepare.step",
        "--input",
        mnist_uri,
        "--output",
        str(out),
        "--min-images-per-class",
        "5",
        "--shard-size",
        "100",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    same = tmp_path / "in-process"
    prepare(
        PrepareConfig(
            input=mnist_uri, output=str(same), min_images_per_class=5, shard_size=100, workers=1
        ),
        s3_settings,
        log=quiet,
    )
    for name in [
        "manifest.json",
        "quality_report.json",
        *(s["file"] for s in read_manifest(out)["shards"]),
    ]:
        assert (
            hashlib.sha256((out / name).read_bytes()).digest()
            == hashlib.sha256((same / name).read_bytes()).digest()
        ), name


def test_hostile_keys_and_changed_object(
    s3_settings: Settings, raw_mnist_dir: Path, tmp_path: Path
) -> None:
    bucket = s3_settings.data_bucket
    uri = f"s3://{bucket}/raw/hostile"
    import_dataset(str(raw_mnist_dir), uri, s3_settings, log=quiet)
    client = s3_client(s3_settings)
    hostile = {  # key under the prefix -> expected reason ("" = used)
        "../escape.png": "unknown_label",
        "3/../../../up.png": "unknown_label",
        "./3/dot.png": "unknown_label",
        "..\\x.png": "unknown_label",
        "/abs.png": "unknown_label",
        "\u202egnp.exe/rtl.png": "unknown_label",
        "3/\u00fc\u0308\ufeff.png": "",
    }
    listed_as: dict[str, str] = {}
    for n, (key, reason) in enumerate(hostile.items()):
        body = encode(Image.new("L", (9, 9), 100 + n), "PNG")
        try:  # SeaweedFS refuses "." and ".." segments; AWS S3 stores them verbatim
            client.put_object(Bucket=bucket, Key="raw/hostile/" + key, Body=body)
        except ClientError:
            continue
        listed_as[key.lstrip("/")] = reason  # and it folds "//" into "/"
    listing = list_source(uri, s3_settings)
    victim = next(it for it in listing.items if it.key.startswith("5/"))
    client.put_object(
        Bucket=bucket,
        Key="raw/hostile/" + victim.key,
        Body=encode(Image.new("L", (9, 9), 7), "PNG"),
    )
    out = tmp_path / "out"
    result = prepare(
        PrepareConfig(input=uri, output=str(out), min_images_per_class=5),
        s3_settings,
        log=quiet,
        listing=listing,
    )
    got = {q["key"]: q["reason"] for q in result.report["quarantined"]}
    assert got[victim.key] == "changed" and "ETag" in next(
        q["detail"] for q in result.report["quarantined"] if q["key"] == victim.key
    )
    assert {k: got.get(k, "") for k in listed_as} == listed_as
    assert result.report["total"] == 300 + len(listed_as)
    assert result.report["used"] + len(got) == result.report["total"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [s["file"] for s in result.manifest["shards"]] + ["manifest.json", "quality_report.json"]
    )


def test_bad_credentials_and_unreadable_prefix(
    s3_settings: Settings, raw_mnist_dir: Path, digits_uri: str, tmp_path: Path
) -> None:
    bad = s3_settings.with_overrides(
        mode="aws",
        s3_endpoint_url_override=s3_settings.s3_endpoint_url,
        env_credentials=Credentials("LEPBADKEY", "not-the-secret"),
    )
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="cannot list input"):
        prepare(PrepareConfig(input=digits_uri, output=str(out)), bad, log=quiet)
    with pytest.raises(SourceError, match="NoSuchBucket|cannot list"):
        prepare(
            PrepareConfig(input="s3://no-such-bucket-lepton/raw", output=str(out)),
            s3_settings,
            log=quiet,
        )
    with pytest.raises(SourceError, match="no objects"):
        prepare(
            PrepareConfig(
                input=f"s3://{s3_settings.data_bucket}/raw/nothing-here", output=str(out)
            ),
            s3_settings,
            log=quiet,
        )
    assert not out.exists()
    remote = f"s3://{s3_settings.data_bucket}/datasets/never"
    with pytest.raises(OutputError, match="cannot access output"):
        prepare(PrepareConfig(input=str(raw_mnist_dir), output=remote), bad, log=quiet)
    assert keys_under(s3_settings, "datasets/never") == []


def test_upload_files_writes_bytes_and_files_and_refuses_unsafe_keys(
    s3_settings: Settings, tmp_path: Path
) -> None:
    from pipelines.prepare.importers import upload_files

    local = tmp_path / "a.bin"
    local.write_bytes(b"from a file")
    uri = f"s3://{s3_settings.data_bucket}/upload-check"
    pairs: list[tuple[str, bytes | str]] = [
        (f"x/{i}.bin", bytes([i % 256]) * i) for i in range(600)
    ]
    assert upload_files([*pairs, ("y/a.bin", str(local))], uri, s3_settings) == 601
    client = s3_client(s3_settings)
    listed = client.list_objects_v2(Bucket=s3_settings.data_bucket, Prefix="upload-check/x/")
    assert listed["KeyCount"] == 600
    assert (
        client.get_object(Bucket=s3_settings.data_bucket, Key="upload-check/x/7.bin")["Body"].read()
        == bytes([7]) * 7
    )
    assert (
        client.get_object(Bucket=s3_settings.data_bucket, Key="upload-check/y/a.bin")["Body"].read()
        == b"from a file"
    )
    with pytest.raises(ValueError, match="unsafe"):
        upload_files([("../escape.bin", b"no")], uri, s3_settings)
