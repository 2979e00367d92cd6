"""inference/preprocess.py: the one preprocessing policy (docs/contracts.md)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inference.preprocess import (
    PREPROCESSING_VERSION,
    REASONS,
    ImageRejected,
    _convert_pixels,
    decode_image,
    load_array,
    to_array,
)
from tests.fixtures_data import png_declaring

MAX_PIXELS = 4_000_000


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def reason(data: bytes, max_pixels: int = MAX_PIXELS, min_side: int = 1) -> str:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, max_pixels, min_side)
    assert info.value.reason in REASONS
    return info.value.reason


def test_version_is_an_int() -> None:
    assert isinstance(PREPROCESSING_VERSION, int) and PREPROCESSING_VERSION >= 1


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_accepted_formats_decode_and_convert(fmt: str) -> None:
    data = encode(Image.fromarray(noise()), fmt)
    img = decode_image(data, MAX_PIXELS)
    assert img.size == (60, 40)
    rgb = to_array(img, (16, 24), 3)
    gray = to_array(img, (16, 24), 1)
    assert rgb.shape == (16, 24, 3) and gray.shape == (16, 24, 1)
    assert rgb.dtype == gray.dtype == np.uint8


def test_lossless_same_size_is_identity() -> None:
    pixels = noise(32, 32)
    out = load_array(encode(Image.fromarray(pixels), "PNG"), (32, 32), 3, MAX_PIXELS)
    np.testing.assert_array_equal(out, pixels)


def test_deterministic() -> None:
    data = encode(Image.fromarray(noise()), "JPEG", quality=80)
    first = load_array(data, (20, 20), 3, MAX_PIXELS)
    for _ in range(3):
        np.testing.assert_array_equal(load_array(data, (20, 20), 3, MAX_PIXELS), first)


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("empty", b"", "empty"),
        ("random", np.random.default_rng(1).bytes(2000), "undecodable"),
        ("gif", encode(Image.fromarray(noise()).convert("P"), "GIF"), "unsupported_format"),
        ("tiff", encode(Image.fromarray(noise()), "TIFF"), "unsupported_format"),
        ("pdf", encode(Image.fromarray(noise()), "PDF"), "unsupported_format"),
        ("ico", encode(Image.fromarray(noise(32, 32)), "ICO"), "unsupported_format"),
        ("bomb", png_declaring(50_000, 50_000), "too_large"),
        ("absurd", png_declaring(2**31 - 1, 2**31 - 1), "too_large"),
    ],
)
def test_rejections(name: str, data: bytes, expected: str) -> None:
    assert reason(data) == expected, name


def test_pixel_limit_checked_on_declared_size() -> None:
    data = encode(Image.new("RGB", (300, 200)), "PNG")
    assert reason(data, max_pixels=300 * 200 - 1) == "too_large"
    assert decode_image(data, max_pixels=300 * 200).size == (300, 200)
    assert reason(data, min_side=201) == "too_small"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_truncated(fmt: str) -> None:
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    assert reason(data[: len(data) // 2]) == "truncated"


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 10))  # left half blue
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(img, "PNG", exif=exif.tobytes())
    upright = decode_image(data, MAX_PIXELS)
    assert upright.size == (10, 20)
    arr = to_array(upright, (20, 10), 3)
    assert arr[2, 5, 2] > 200 and arr[17, 5, 0] > 200  # blue on top, red below


def test_corrupt_exif_is_ignored() -> None:
    img = Image.fromarray(noise(16, 16))
    data = encode(img, "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert to_array(decode_image(data, MAX_PIXELS), (16, 16), 3).shape == (16, 16, 3)


def test_alpha_composited_on_black() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[0], [255], [128], [64]]
    out = load_array(encode(Image.fromarray(rgba, "RGBA"), "PNG"), (4, 4), 3, MAX_PIXELS)
    np.testing.assert_array_equal(out[:, 0, 0], [0, 200, 100, 50])


def test_palette_with_transparency() -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([255, 255, 255, 0, 255, 0] + [0] * 762)
    img.paste(0, (0, 0, 4, 8))  # left half index 0 = transparent white
    out = load_array(encode(img, "PNG", transparency=0), (8, 8), 3, MAX_PIXELS)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])  # transparent -> black
    np.testing.assert_array_equal(out[0, 7], [0, 255, 0])


def test_sixteen_bit_gray() -> None:
    wide = np.array([[0, 257, 65535, 32768]], dtype=np.uint16)
    img = Image.fromarray(wide)
    assert img.mode.startswith("I;16")
    out = load_array(encode(img, "PNG"), (1, 4), 1, MAX_PIXELS)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 128])


def test_cmyk_jpeg() -> None:
    img = Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK")
    out = load_array(encode(img, "JPEG", quality=95), (16, 16), 3, MAX_PIXELS)
    assert out[8, 8, 0] > 200 and out[8, 8, 1] < 60 and out[8, 8, 2] < 60


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA", "P", "I", "F", "CMYK"])
def test_every_mode_converts(mode: str) -> None:
    img = Image.fromarray(noise(12, 12)).convert(mode)
    for channels in (1, 3):
        assert to_array(img, (5, 7), channels).shape == (5, 7, channels)


def test_gray_to_rgb_replicates() -> None:
    gray = np.random.default_rng(3).integers(0, 256, (6, 6), dtype=np.uint8)
    out = to_array(Image.fromarray(gray), (6, 6), 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_plain_images_take_the_short_path_to_the_same_pixels() -> None:
    """8-bit L and RGB skip the numpy round trips (`_convert_plain`); every size and channel
    count must give exactly what the general path (`_convert_pixels`) gives."""
    rng = np.random.default_rng(5)
    for trial in range(120):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        gray = trial % 2 == 0
        arr = rng.integers(0, 256, (h, w, 1) if gray else (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr[..., 0] if gray else arr)
        for size in ((h, w), (int(rng.integers(1, 64)), int(rng.integers(1, 64)))):
            for channels in (1, 3):
                fast = to_array(img, size, channels)
                general = _convert_pixels(arr, gray, size[0], size[1], channels)
                assert fast.shape == general.shape == (*size, channels)
                np.testing.assert_array_equal(fast, general)


def test_extreme_aspect_ratio() -> None:
    out = load_array(encode(Image.new("RGB", (1, 10_000), (9, 9, 9)), "PNG"), (8, 8), 3, MAX_PIXELS)
    assert out.shape == (8, 8, 3) and int(out.max()) == 9


def test_bad_arguments() -> None:
    img = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError):
        to_array(img, (0, 4), 3)
    with pytest.raises(ValueError):
        to_array(img, (4, 4), 2)
