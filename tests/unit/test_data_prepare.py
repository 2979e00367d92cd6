"""The prepare core on local folders: quarantine reasons, determinism, stable splits, errors."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.prepare import output as output_mod
from pipelines.prepare.config import PrepareConfig
from pipelines.prepare.core import prepare
from pipelines.prepare.decode import DecodeSpec, write_spill
from pipelines.prepare.errors import PrepareError, SourceError
from pipelines.prepare.selection import screen
from pipelines.prepare.sources import list_source
from pipelines.prepare.spill import DecodedSet, SpillReader, run_decode_pass, with_read_hashes
from tests.fixtures_data import (
    PLANT_MAX_PIXELS,
    PLANT_MIN_SIDE,
    mnist_subset,
    plant_bad_files,
    write_image_folder,
)
from training.shards import DatasetError, load_split, read_manifest
from training.wds import encode_image


def cfg_for(raw: Path, out: Path, **kw: object) -> PrepareConfig:
    base: dict[str, object] = {
        "min_images_per_class": 5,
        "shard_size": 100,
        "workers": 2,
        "chunk_size": 64,
    }
    base.update(kw)
    return PrepareConfig(input=str(raw), output=str(out), **base)  # type: ignore[arg-type]


def quiet(_msg: str) -> None:
    pass


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def pixel_splits(folder: Path) -> dict[bytes, str]:
    manifest = read_manifest(folder)
    out: dict[bytes, str] = {}
    for split in manifest["splits"]:
        images, _ = load_split(folder, split, manifest=manifest)
        out.update({img.tobytes(): split for img in images})
    return out


def test_every_bad_file_quarantined_with_its_reason(raw_mnist_copy: Path, tmp_path: Path) -> None:
    expected = plant_bad_files(raw_mnist_copy, tmp_path / "outside")
    total = sum(1 for p in raw_mnist_copy.rglob("*") if p.is_file() or p.is_symlink())
    out = tmp_path / "out"
    result = prepare(
        cfg_for(raw_mnist_copy, out, max_pixels=PLANT_MAX_PIXELS, min_side=PLANT_MIN_SIDE),
        log=quiet,
    )
    report = result.report
    got = {q["key"]: q["reason"] for q in report["quarantined"]}
    want = {k: r for k, r in expected.items() if r}
    assert got == want
    assert report["total"] == total
    assert report["used"] + len(report["quarantined"]) == report["total"]
    # Odd-but-good images (RGBA, palette, 16-bit, JPEG, WebP, BMP, Unicode name) are used.
    manifest = read_manifest(out)
    assert manifest["classes"] == [str(d) for d in range(10)]
    assert sum(s["count"] for s in manifest["splits"].values()) == report["used"]
    assert (
        manifest["splits"]["train"]["class_counts"]["7"]
        + manifest["splits"]["val"]["class_counts"]["7"]
        + manifest["splits"]["test"]["class_counts"]["7"]
        == 30 + 7
    )
    images, labels = load_split(out, "train")
    assert images.shape[1:] == (28, 28, 1) and images.dtype == np.uint8
    assert len(labels) == manifest["splits"]["train"]["count"]
    # Nothing but the dataset files in the output, even with hostile names in the input.
    assert {p.name for p in out.iterdir()} == {s["file"] for s in manifest["shards"]} | {
        "manifest.json",
        "quality_report.json",
    }


def test_two_runs_are_byte_identical_and_second_is_a_no_op(
    raw_mnist_dir: Path, tmp_path: Path
) -> None:
    a = prepare(cfg_for(raw_mnist_dir, tmp_path / "a", workers=2), log=quiet)
    b = prepare(cfg_for(raw_mnist_dir, tmp_path / "b", workers=1, chunk_size=7), log=quiet)
    assert not a.skipped and not b.skipped
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    for shard in read_manifest(tmp_path / "a")["shards"]:
        data = (tmp_path / "a" / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    msgs: list[str] = []
    again = prepare(cfg_for(raw_mnist_dir, tmp_path / "a"), log=msgs.append)
    assert again.skipped and any("up to date" in m for m in msgs)
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    # A config change is not up to date.
    changed = prepare(cfg_for(raw_mnist_dir, tmp_path / "a", shard_size=1000), log=quiet)
    assert not changed.skipped and len(changed.manifest["shards"]) == 3
    assert {p.name for p in (tmp_path / "a").glob("*.tar")} == {
        "train-00000.tar",
        "val-00000.tar",
        "test-00000.tar",
    }


def test_a_first_run_hashes_while_decoding_as_a_hashing_listing_would(
    raw_mnist_copy: Path, tmp_path: Path
) -> None:
    """With no dataset at the output, the listing takes no content hashes (the decode workers
    hash what they read, so each file is read once, nor sizes: a file over max_file_bytes is
    found by its reader, unread); the dataset, report and raw fingerprint are byte for byte a
    run's over a hashing listing, every quarantine reason included, and the next run finds
    them up to date."""
    plant_bad_files(raw_mnist_copy, tmp_path / "outside")
    os.symlink(raw_mnist_copy / "3" / "gone.png", raw_mnist_copy / "3" / "dangling.png")
    big = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    (raw_mnist_copy / "4" / "big.png").write_bytes(encode_image(big, "png"))
    kw: dict[str, object] = {
        "max_pixels": PLANT_MAX_PIXELS,
        "min_side": PLANT_MIN_SIDE,
        "max_file_bytes": 40_000,  # big.png is ~49 KB, every other file under 13 KB
    }
    msgs: list[str] = []
    first = prepare(cfg_for(raw_mnist_copy, tmp_path / "first", **kw), log=msgs.append)
    assert any("a first run: contents hashed as decoded" in m for m in msgs)
    hashing = list_source(str(raw_mnist_copy), None)
    listed = prepare(cfg_for(raw_mnist_copy, tmp_path / "listed", **kw), log=quiet, listing=hashing)
    assert first.manifest["raw_fingerprint"] == hashing.fingerprint()
    assert file_hashes(tmp_path / "first") == file_hashes(tmp_path / "listed")
    reasons = {q["reason"] for q in first.report["quarantined"]}
    assert {"unreadable", "unsafe_key", "unknown_extension", "duplicate", "too_large"} <= reasons
    assert {"key": "4/big.png", "reason": "too_large"}.items() <= next(
        q for q in first.report["quarantined"] if q["key"] == "4/big.png"
    ).items()
    assert first.report == listed.report
    again: list[str] = []
    rerun = prepare(cfg_for(raw_mnist_copy, tmp_path / "first", **kw), log=again.append)
    assert rerun.skipped and not any("contents hashed" in m for m in again)


def test_read_hashes_complete_a_listing_block_by_block(
    raw_mnist_copy: Path, tmp_path: Path
) -> None:
    """The hashes come back from the decode pass in blocks: every block boundary lands on the
    item a hashing listing gives, screened-out files (not decoded) included."""
    (raw_mnist_copy / "3" / "notes.txt").write_bytes(b"not an image")
    cfg = cfg_for(raw_mnist_copy, tmp_path / "out")
    lazy = list_source(str(raw_mnist_copy), None, names_only=True)
    assert not any(it.etag or it.size >= 0 for it in lazy.items)
    entries, _ = screen(lazy.items, cfg)
    spec = DecodeSpec(
        cfg.image_size,
        cfg.channels,
        cfg.max_pixels,
        cfg.min_side,
        str(tmp_path),
        None,
        max_file_bytes=cfg.max_file_bytes,
    )
    decoded, _ = run_decode_pass(entries, spec, 1, 64, quiet)
    completed = with_read_hashes(lazy, decoded, block=7)
    assert completed.items == list_source(str(raw_mnist_copy), None).items


def _decoded(chunks: list[int], rows: list[int], sizes: list[int]) -> DecodedSet:
    n = len(rows)
    z = np.zeros(n, np.int64)
    return DecodedSet(
        np.arange(n),
        np.zeros((n, 32), np.uint8),
        z,
        np.array(chunks),
        np.array(rows),
        np.array(sizes),
        np.zeros((n, 1), np.int64),
        np.zeros((n, 1), np.int64),
        {},
    )


@pytest.mark.parametrize("max_open", [0, 1, None])
def test_spilled_images_are_found_from_the_decode_records_alone(
    tmp_path: Path, max_open: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where an image lies in its spill file follows from the records (rows back to back, of
    the sizes recorded), items of two files interleaved as merged parts leave them, rejected
    ones between; any subset in any order lands in its slots, descriptors kept open or not;
    a spill file of another length than its records (a damaged scratch file) is refused, not
    written as a shard with members out of place."""
    write_spill(str(tmp_path), 0, [b"abc", b"defgh"])
    write_spill(str(tmp_path), 1, [b"XY", b"Z"])
    decoded = _decoded([1, 0, -1, 0, 1], [0, 0, -1, 1, 1], [2, 3, 0, 5, 1])
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a: opened.append(path) or real_open(path, *a))
    with SpillReader(str(tmp_path), decoded, max_open) as reader:
        out = bytearray(11)
        reader.copy_into(out, np.array([0, 2, 5, 10]), np.array([0, 1, 3, 4]))
        assert out == b"XYabcdefghZ"
        out = bytearray(6)
        reader.copy_into(out, np.array([0, 1, 3]), np.array([4, 0, 1]))
        assert out == b"ZXYabc"
    # Kept open, a file is opened once however many shards draw from it (they all do).
    assert len(opened) == {0: 4, 1: 3, None: 2}[max_open]
    monkeypatch.undo()
    (tmp_path / "chunk-000001.bin").write_bytes(b"XYZ!")
    with SpillReader(str(tmp_path), decoded) as reader:
        reader.copy_into(bytearray(3), np.array([0]), np.array([1]))  # another file: fine
        with pytest.raises(
            ValueError, match=r"chunk-000001.bin: 4 bytes, the decode pass recorded 3"
        ):
            reader.copy_into(bytearray(2), np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="rows are not 0, 1, 2"):
        SpillReader(str(tmp_path), _decoded([0, 0], [0, 2], [3, 5]))


def test_adding_ten_percent_moves_no_old_image(raw_mnist_copy: Path, tmp_path: Path) -> None:
    prepare(cfg_for(raw_mnist_copy, tmp_path / "v1"), log=quiet)
    before = pixel_splits(tmp_path / "v1")
    images, labels, ids = mnist_subset(3, offset=100)  # 30 new images, disjoint from the 300
    write_image_folder(raw_mnist_copy, images, labels, ids)
    result = prepare(cfg_for(raw_mnist_copy, tmp_path / "v2"), log=quiet)
    after = pixel_splits(tmp_path / "v2")
    assert result.report["used"] == len(before) + 30
    assert all(after[px] == split for px, split in before.items())
    assert len(set(after) - set(before)) == 30


def test_mean_std_match_train_pixels(raw_mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = prepare(
        cfg_for(raw_mnist_dir, out, channels=3, image_size=(16, 20)), log=quiet
    ).manifest
    images, _ = load_split(out, "train")
    assert images.shape[1:] == (16, 20, 3)
    x = images.reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(manifest["mean"], x.mean(axis=0), atol=1e-9)
    assert np.allclose(manifest["std"], x.std(axis=0), atol=1e-9)


@pytest.mark.parametrize("case", ["one_class", "under_min", "missing_input", "empty_input"])
def test_invalid_input_writes_nothing(raw_mnist_dir: Path, tmp_path: Path, case: str) -> None:
    raw = tmp_path / "raw"
    if case == "one_class":
        shutil.copytree(raw_mnist_dir / "1", raw / "1")
        err: type[Exception] = PrepareError
        cfg = cfg_for(raw, tmp_path / "out")
    elif case == "under_min":
        shutil.copytree(raw_mnist_dir, raw)
        err, cfg = PrepareError, cfg_for(raw, tmp_path / "out", min_images_per_class=31)
    elif case == "missing_input":
        err, cfg = SourceError, cfg_for(raw, tmp_path / "out")
    else:
        raw.mkdir()
        err, cfg = SourceError, cfg_for(raw, tmp_path / "out")
    with pytest.raises(err) as info:
        prepare(cfg, log=quiet)
    assert str(info.value)
    assert not (tmp_path / "out").exists()


def test_class_list_option_and_under_min_message(raw_mnist_dir: Path, tmp_path: Path) -> None:
    result = prepare(cfg_for(raw_mnist_dir, tmp_path / "out", classes=("7", "1")), log=quiet)
    assert result.manifest["classes"] == ["7", "1"]
    reasons = {q["reason"] for q in result.report["quarantined"]}
    assert reasons == {"unknown_label"} and len(result.report["quarantined"]) == 240
    with pytest.raises(PrepareError, match="under the minimum of 40"):
        prepare(cfg_for(raw_mnist_dir, tmp_path / "x", min_images_per_class=40), log=quiet)


def test_crash_while_writing_leaves_no_manifest(
    raw_mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    prepare(cfg_for(raw_mnist_dir, out), log=quiet)  # an older, complete dataset
    calls = {"n": 0}
    real = output_mod.Destination.put_shard

    def flaky(self: output_mod.Destination, name: str, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(self, name, data)

    monkeypatch.setattr(output_mod.Destination, "put_shard", flaky)
    with pytest.raises(OSError):
        prepare(cfg_for(raw_mnist_dir, out, shard_size=50), log=quiet)
    with pytest.raises(DatasetError, match="no manifest.json"):
        read_manifest(out)


def test_file_changed_after_listing_is_reported(raw_mnist_copy: Path, tmp_path: Path) -> None:
    cfg = cfg_for(raw_mnist_copy, tmp_path / "out")
    listing = list_source(str(raw_mnist_copy), None)
    victim = raw_mnist_copy / listing.items[5].key
    victim.write_bytes((raw_mnist_copy / listing.items[6].key).read_bytes())
    (raw_mnist_copy / listing.items[7].key).unlink()
    result = prepare(cfg, log=quiet, listing=listing)
    got = {q["key"]: q["reason"] for q in result.report["quarantined"]}
    assert got == {listing.items[5].key: "changed", listing.items[7].key: "changed"}
    assert any("changed" in w for w in result.report["warnings"])


def test_output_inside_input_is_refused(raw_mnist_copy: Path) -> None:
    with pytest.raises(PrepareError, match="overlap"):
        prepare(cfg_for(raw_mnist_copy, raw_mnist_copy / "dataset"), log=quiet)


def test_original_size_and_other_encodings_read_back_as_resized_png(
    raw_mnist_dir: Path, tmp_path: Path
) -> None:
    import tarfile

    from PIL import Image

    base = cfg_for(raw_mnist_dir, tmp_path / "png", image_size=(16, 16))
    reference = prepare(base, log=quiet).manifest
    want, labels = load_split(tmp_path / "png", "train")
    variants = {
        "original": {"keep_original_size": True},
        "webp": {"encoding": "webp"},
        "jpeg": {"encoding": "jpeg", "jpeg_quality": 95},
    }
    for name, options in variants.items():
        out = tmp_path / name
        manifest = prepare(
            cfg_for(raw_mnist_dir, out, image_size=(16, 16), **options), log=quiet
        ).manifest
        assert manifest["mean"] == reference["mean"] and manifest["std"] == reference["std"]
        got, got_labels = load_split(out, "train")
        np.testing.assert_array_equal(got_labels, labels)
        if name == "jpeg":
            assert np.abs(got.astype(int) - want).mean() < 3  # lossy, but close
        else:
            np.testing.assert_array_equal(got, want)  # lossless
    assert read_manifest(tmp_path / "original")["stored_size"] == "original"
    with tarfile.open(tmp_path / "original" / "train-00000.tar") as tf:
        first = tf.extractfile(tf.getmembers()[0])
        assert first is not None and Image.open(first).size == (28, 28)  # stored as it came


def test_decode_progress_says_about_how_long_is_left(
    raw_mnist_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each progress line of the decode pass estimates the time left from the rate so far;
    the last one, with nothing left, does not."""
    from types import SimpleNamespace

    from pipelines import progress
    from training.durations import time_left

    ticks = iter(range(0, 10**6, 3))  # each reading of the clock 3 s after the one before
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    cfg = cfg_for(raw_mnist_copy, tmp_path / "out")
    entries, _ = screen(list_source(str(raw_mnist_copy), None).items, cfg)
    spec = DecodeSpec(
        cfg.image_size, cfg.channels, cfg.max_pixels, cfg.min_side, str(tmp_path), None
    )
    lines: list[str] = []
    run_decode_pass(entries, spec, 1, 50, lines.append)
    n = len(entries)
    assert n > 100
    # the first chunk: 50 images in 3 s, so (n - 50) at 16.7 images/s are left
    left = time_left((n - 50) * 3 / 50)
    assert lines[0] == f"decoded 50/{n} ({5000 // n}%), 0 rejected, 17 images/s, about {left} left"
    assert len(lines) == -(-n // 50)  # every chunk logged: the clock moved 3 s
    assert lines[-1].startswith(f"decoded {n}/{n} (100%)") and "left" not in lines[-1]
