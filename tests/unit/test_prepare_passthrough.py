"""Prepare stores a bare PNG that needs no conversion as it is, and re-encodes everything else."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference.png import is_bare, plain_header
from pipelines.prepare.decode import DecodeSpec, decode_one
from tests.unit.test_inference_png import assemble, chunks, photo, pillow_png
from training.wds import decode_pixels, encode_png

SPEC = DecodeSpec(
    image_size=(12, 10), channels=1, max_pixels=4_000_000, min_side=1, work_dir="", settings=None
)
GRAY = photo(12, 10, 1)


def with_chunk(data: bytes, kind: bytes, payload: bytes) -> bytes:
    parts = chunks(data)
    return assemble([parts[0], (kind, payload), *parts[1:]])


def test_bare_means_pixel_data_alone() -> None:
    for data in (pillow_png(GRAY), encode_png(photo(7, 9, 3)), pillow_png(GRAY, optimize=True)):
        assert plain_header(data) is not None and is_bare(data)
    gamma = with_chunk(pillow_png(GRAY), b"gAMA", struct.pack(">I", 45455))
    assert plain_header(gamma) is not None and not is_bare(gamma)  # decodable, not bare
    trailing = pillow_png(GRAY) + b"after IEND"
    assert not is_bare(trailing)
    parts = chunks(pillow_png(GRAY))
    assert not is_bare(assemble(parts[:-1]))  # no IEND


@pytest.mark.parametrize("keep_original_size", [False, True])
def test_a_bare_png_at_the_dataset_size_is_stored_as_it_is(keep_original_size: bool) -> None:
    data = pillow_png(GRAY, optimize=True)  # not what encode_png would write
    assert data != encode_png(GRAY)
    pixels, stored = decode_one(data, replace(SPEC, keep_original_size=keep_original_size))
    assert stored == data
    np.testing.assert_array_equal(pixels, GRAY)


def test_kept_original_size_is_stored_as_it_is_too() -> None:
    big = photo(20, 16, 1)
    data = pillow_png(big)
    pixels, stored = decode_one(data, replace(SPEC, keep_original_size=True))
    assert stored == data and pixels.shape == (12, 10, 1)


@pytest.mark.parametrize(
    "case",
    ["resized", "to_rgb", "harmless_chunk", "trailing_bytes", "webp", "not_plain"],
)
def test_anything_else_is_encoded_by_prepare(case: str, tmp_path: Path) -> None:
    spec, data = SPEC, pillow_png(GRAY)
    if case == "resized":
        data = pillow_png(photo(24, 20, 1))
    elif case == "to_rgb":
        spec = replace(SPEC, channels=3)
    elif case == "harmless_chunk":
        data = with_chunk(data, b"pHYs", struct.pack(">IIB", 2835, 2835, 1))
    elif case == "trailing_bytes":
        data += b"\0" * 16
    elif case == "webp":
        spec = replace(SPEC, encoding="webp")
    elif case == "not_plain":  # 16-bit: Pillow decodes it
        data = pillow_png(photo(12, 10, 1).astype(np.uint16)[..., 0] * 257)
    pixels, stored = decode_one(data, spec)
    assert stored != data
    if spec.encoding == "png":
        assert stored == encode_png(pixels)
    ext = "webp" if spec.encoding == "webp" else "png"
    np.testing.assert_array_equal(decode_pixels(stored, ext, spec.channels), pixels)
