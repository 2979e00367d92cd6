"""training/shards.py: deterministic shards, manifest checks, integrity refusal."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import wds
from training.shards import (
    DatasetError,
    load_split,
    manifest_sha256,
    read_manifest,
    shard_bytes,
    write_dataset,
    write_shard,
)
from training.wds import Sample, tar_bytes


def _arrays(n: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8),
        rng.integers(0, 3, n).astype(np.int64),
    )


def test_write_shard_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    images, labels = _arrays()
    sha_a = write_shard(tmp_path / "a.tar", images, labels)
    sha_b = write_shard(tmp_path / "b.tar", images.copy(), labels.copy())
    assert sha_a == sha_b == hashlib.sha256((tmp_path / "a.tar").read_bytes()).hexdigest()
    assert (tmp_path / "a.tar").read_bytes() == shard_bytes(images, labels)
    with tarfile.open(tmp_path / "a.tar") as tf:  # a plain tar any tool reads
        members = tf.getmembers()
        assert [m.name for m in members[:2]] == ["000000000.png", "000000000.cls"]
        assert {(m.mtime, m.mode, m.uid, m.gid, m.uname) for m in members} == {(0, 0o644, 0, 0, "")}
        got = [
            np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())))  # type: ignore[union-attr]
            for m in members[::2]
        ]
        got_labels = [int(tf.extractfile(m).read()) for m in members[1::2]]  # type: ignore[union-attr]
    np.testing.assert_array_equal(np.stack(got), images)  # lossless PNG
    np.testing.assert_array_equal(got_labels, labels)
    assert not list(tmp_path.glob("*.tmp")), "temp files left behind"


def _tarfile_archive(members: list[tuple[str, bytes]]) -> bytes:
    """The reference: what tarfile writes for these members (ustar, mtime 0, mode 0644)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("count", [0, 1, 7, 40])
def test_tar_bytes_are_byte_for_byte_what_tarfile_writes(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers built as arrays (5 at a time here), members copied into one buffer: tarfile is
    the reference, for sizes at and around block boundaries, long and non-ASCII names."""
    monkeypatch.setattr(wds, "_HEADERS_AT_ONCE", 5)
    rng = np.random.default_rng(count)
    sizes = [0, 1, 511, 512, 513, 1024, 1800, 10_241]
    samples = [
        Sample(
            key=("k" * int(rng.integers(1, 96)) if i % 3 else f"\u00e9t\u00e9/{i:09d}"),
            ext="png" if i % 2 else "x" * 3,
            image=rng.integers(0, 256, sizes[i % len(sizes)], dtype=np.uint8).tobytes(),
            label=int(rng.integers(0, 1200)),
        )
        for i in range(count)
    ]
    members = [
        m
        for s in samples
        for m in ((f"{s.key}.{s.ext}", s.image), (f"{s.key}.cls", b"%d" % s.label))
    ]
    assert tar_bytes(samples) == _tarfile_archive(members)


def test_tar_bytes_refuse_a_name_tar_cannot_hold() -> None:
    with pytest.raises(ValueError, match="over 100 bytes"):
        tar_bytes([Sample("k" * 97, "png", b"x", 0)])  # 101 bytes with ".png"


def test_write_shard_rejects_bad_dtypes(tmp_path: Path) -> None:
    images, labels = _arrays()
    with pytest.raises(ValueError, match="uint8"):
        write_shard(tmp_path / "x.tar", images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="int64"):
        write_shard(tmp_path / "x.tar", images, labels.astype(np.int32))
    with pytest.raises(ValueError, match="labels"):
        write_shard(tmp_path / "x.tar", images, labels[:-1])


def test_load_split_concatenates_shards(tmp_path: Path) -> None:
    images, labels = _arrays(25)
    manifest = write_dataset(
        tmp_path,
        {
            "train": (images[:20], labels[:20]),
            "val": (images[20:], labels[20:]),
            "test": (images[:0], labels[:0]),
        },
        ["a", "b", "c"],
        dataset="t",
        shard_size=7,
    )
    assert [s["file"] for s in manifest["shards"] if s["split"] == "train"] == [
        "train-00000.tar",
        "train-00001.tar",
        "train-00002.tar",
    ]
    x, y = load_split(tmp_path, "train")
    np.testing.assert_array_equal(x, images[:20])
    np.testing.assert_array_equal(y, labels[:20])
    x_test, y_test = load_split(tmp_path, "test")
    assert x_test.shape == (0, 4, 5, 3) and y_test.shape == (0,)
    assert read_manifest(tmp_path)["image_size"] == [4, 5]
    assert (
        manifest_sha256(tmp_path)
        == hashlib.sha256((tmp_path / "manifest.json").read_bytes()).hexdigest()
    )


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no manifest.json"):
        read_manifest(tmp_path)


def test_tampered_shard_is_refused_by_name(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(tiny_dataset_dir, copy)
    images, labels = load_split(copy, "val")
    images[0, 0, 0, 0] ^= 0xFF
    write_shard(copy / "val-00000.tar", images, labels)  # valid file, wrong content
    with pytest.raises(DatasetError, match=r"val-00000\.tar sha256 mismatch"):
        load_split(copy, "val")
    load_split(copy, "val", verify=False)  # opt-out still reads it
    load_split(copy, "train")  # other shards unaffected


def test_tiny_dataset_fixture_follows_the_contract(tiny_dataset_dir: Path) -> None:
    manifest = json.loads((tiny_dataset_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["format"] == "webdataset"
    assert manifest["classes"] == [str(i) for i in range(10)]
    assert manifest["channels"] == 1 and manifest["image_size"] == [8, 8]
    assert len(manifest["mean"]) == len(manifest["std"]) == 1
    counts = {split: info["count"] for split, info in manifest["splits"].items()}
    assert sum(counts.values()) == 1797 and min(counts.values()) > 100
    for shard in manifest["shards"]:
        data = (tiny_dataset_dir / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    report = json.loads((tiny_dataset_dir / "quality_report.json").read_text())
    assert report["used"] + len(report["quarantined"]) == report["total"]


def test_format_1_dataset_is_still_read_and_others_refused(tmp_path: Path) -> None:
    from training.data import ShardDataModule
    from training.shards_npz import npz_shard_bytes

    images, labels = _arrays(12)
    (tmp_path / "train-00000.npz").write_bytes(npz_shard_bytes(images, labels))
    sha = hashlib.sha256((tmp_path / "train-00000.npz").read_bytes()).hexdigest()
    manifest = {  # what the prepare step wrote before the WebDataset format
        "format_version": 1,
        "classes": ["a", "b", "c"],
        "image_size": [4, 5],
        "channels": 3,
        "mean": [0.5] * 3,
        "std": [0.2] * 3,
        "splits": {"train": {"count": 12}},
        "shards": [{"file": "train-00000.npz", "split": "train", "count": 12, "sha256": sha}],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    x, y = load_split(tmp_path, "train")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    data = ShardDataModule(
        tmp_path,
        read_manifest(tmp_path),
        per_device_batch_size=4,
        eval_batch_size=4,
        seed=0,
        in_memory_max_bytes=0,  # a format-1 dataset is held in memory whatever the budget
    )
    assert not data.streaming
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(DatasetError, match=r"format_version 3 .*re-prepare the raw data"):
        read_manifest(tmp_path)


def test_shards_read_with_the_webdataset_library(tiny_dataset_dir: Path) -> None:
    """The format is WebDataset's: its own reader gives the same images and labels."""
    import webdataset as wds

    urls = [str(tiny_dataset_dir / s["file"]) for s in read_manifest(tiny_dataset_dir)["shards"]]
    urls = [u for u in urls if "/val-" in u]
    pipeline = wds.WebDataset(urls, shardshuffle=False).decode("pill").to_tuple("png", "cls")
    got = [(np.asarray(img), int(label)) for img, label in pipeline]
    images, labels = load_split(tiny_dataset_dir, "val")
    assert len(got) == len(labels)
    np.testing.assert_array_equal(np.stack([g[0] for g in got]), images[..., 0])
    assert [g[1] for g in got] == labels.tolist()


def test_foreign_png_members_follow_the_preprocessing_policy() -> None:
    """A PNG another tool wrote (here RGBA) decodes as serving would: alpha on black."""
    from inference.preprocess import to_array
    from training.wds import decode_pixels

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent in one half
    rgba[:, :2, 3] = 255
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    got = decode_pixels(buf.getvalue(), "png", 3)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        expected = to_array(img, (4, 4), 3)
    assert np.array_equal(got, expected)
    assert got[0, 3].tolist() == [0, 0, 0] and got[0, 0].tolist() == [255, 0, 0]


def test_own_pngs_round_trip_and_a_corrupt_stream_is_an_error() -> None:
    """encode_png's files decode on libspng's path; a flipped bit in the pixel data (its
    chunk's CRC now fails) is not read as pixels: Pillow is asked instead and refuses it. A
    stream that inflates past the declared size decodes as Pillow decodes it."""
    import struct
    import zlib

    from training.wds import _png_chunk, decode_pixels, encode_png

    pixels = np.random.default_rng(2).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    png = encode_png(pixels)
    np.testing.assert_array_equal(decode_pixels(png, "png", 3), pixels)
    (length,) = struct.unpack(">I", png[33:37])
    flipped = bytearray(png)
    flipped[41 + length // 2] ^= 4
    with pytest.raises(ValueError, match="cannot decode png"):
        decode_pixels(bytes(flipped), "png", 3)
    raw = zlib.decompress(png[41 : 41 + length]) + b"\0" * 22  # one row too many
    longer = png[:33] + _png_chunk(b"IDAT", zlib.compress(raw)) + png[45 + length :]
    with Image.open(io.BytesIO(longer)) as img:  # what Pillow makes of it, the fallback
        img.load()
        np.testing.assert_array_equal(np.asarray(img), pixels)
    np.testing.assert_array_equal(decode_pixels(longer, "png", 3), pixels)
