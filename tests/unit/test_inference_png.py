"""inference/png.py: libspng's fast path gives Pillow's pixels, and only for files where it can."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from inference.png import decode_plain, plain_header
from inference.preprocess import (
    ImageRejected,
    _decode_with_pillow,
    decode,
    decode_image,
    to_array,
)
from training.wds import encode_png

MAX_PIXELS = 4_000_000


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunk(kind, data) for kind, data in parts)


def pillow_png(pixels: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, "PNG", **kw)
    return buf.getvalue()


def pillow_pixels(data: bytes, channels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return to_array(img, (img.height, img.width), channels)


def photo(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: every PNG filter type wins somewhere when optimised."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 3 + y * 5)[..., None] + np.arange(c) * 40
    return ((base + rng.integers(0, 30, (h, w, c))) % 256).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shape", [(1, 1), (9, 7), (48, 64), (200, 300)])
@pytest.mark.parametrize("options", [{}, {"optimize": True}, {"compress_level": 0}])
def test_the_fast_path_gives_pillows_pixels(channels: int, shape: tuple, options: dict) -> None:
    pixels = photo(*shape, channels)
    for data in (pillow_png(pixels, **options), encode_png(pixels)):
        header = plain_header(data)
        assert header == (shape[1], shape[0], channels)
        fast = decode_plain(data, header)
        np.testing.assert_array_equal(fast, pillow_pixels(data, channels))
        np.testing.assert_array_equal(fast, pixels)
        decoded = decode(data, MAX_PIXELS)
        assert isinstance(decoded, np.ndarray)
        expected = pixels[..., 0] if channels == 1 else pixels
        np.testing.assert_array_equal(np.asarray(decode_image(data, MAX_PIXELS)), expected)


def test_split_pixel_data_and_harmless_chunks_still_take_the_fast_path() -> None:
    pixels = photo(30, 20, 3)
    parts = chunks(pillow_png(pixels))
    (idat,) = [data for kind, data in parts if kind == b"IDAT"]
    split = [(b"IDAT", idat[i : i + 50]) for i in range(0, len(idat), 50)]
    extra = [(b"gAMA", struct.pack(">I", 45455)), (b"pHYs", struct.pack(">IIB", 2835, 2835, 1))]
    data = assemble([parts[0], *extra, *split, (b"tIME", bytes(7)), parts[-1]])
    header = plain_header(data)
    assert header is not None
    np.testing.assert_array_equal(decode_plain(data, header), pixels)
    np.testing.assert_array_equal(pillow_pixels(data, 3), pixels)


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def rotated() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    return exif


def transparent(pixels: np.ndarray) -> bytes:
    return pillow_png(pixels, transparency=(0, 0, 0))


def with_text(pixels: np.ndarray) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", "anything")
    return pillow_png(pixels, pnginfo=info)


@pytest.mark.parametrize(
    "make",
    [
        transparent,
        with_text,
        lambda p: pillow_png(p, exif=rotated()),
        lambda p: pillow_png(p.astype(np.uint16) * 200),  # 16-bit
        lambda p: encode(Image.fromarray(p).convert("P")),
        lambda p: encode(Image.fromarray(p).convert("LA")),
        lambda p: encode(Image.fromarray(p), "JPEG"),
    ],
    ids=["tRNS", "text", "eXIf", "16-bit", "palette", "gray+alpha", "jpeg"],
)
def test_files_pillow_may_read_differently_go_to_pillow(make) -> None:
    gray = photo(12, 10, 1)[..., 0]
    data = make(gray if make is not transparent else photo(12, 10, 3))
    assert plain_header(data) is None
    assert not isinstance(decode(data, MAX_PIXELS), np.ndarray)


def test_damaged_files_get_pillows_verdict() -> None:
    """A bad CRC, a cut-short file, a missing IEND, a second IHDR or pixel data libspng
    refuses: each is judged by Pillow, with the reason it always gave."""
    pixels = photo(16, 16, 3)
    data = pillow_png(pixels)
    parts = chunks(data)
    bad_crc = bytearray(data)
    bad_crc[29] ^= 1  # IHDR's CRC
    assert plain_header(bytes(bad_crc)) is None
    assert plain_header(data[:-20]) is None
    assert plain_header(data[:-12]) is None  # no IEND
    assert plain_header(assemble([parts[0], parts[1], parts[0], parts[-1]])) is None
    garbage = assemble([parts[0], (b"IDAT", b"\x78\x9c" + bytes(range(200))), parts[-1]])
    header = plain_header(garbage)
    assert header is not None and decode_plain(garbage, header) is None
    damaged = (bytes(bad_crc), data[: len(data) // 2], data[:-12], garbage)
    outcomes = [outcome(decode, d) for d in damaged]
    assert outcomes == [outcome(_decode_with_pillow, d) for d in damaged]
    assert [o[0] for o in outcomes] == ["undecodable", "truncated", "decoded", "truncated"]


def outcome(decoder, data: bytes) -> tuple[str, object]:
    """(reason, detail) of a refusal, or ("decoded", the pixels as a list)."""
    try:
        decoded = decoder(data, MAX_PIXELS, 1)
    except ImageRejected as exc:
        return exc.reason, exc.detail
    return "decoded", to_array(decoded, (16, 16), 3).tolist()


def test_size_limits_are_checked_before_libspng_decodes() -> None:
    """A header declaring 50,000 x 50,000 is refused from the header (no 7.5 GB allocation)."""
    parts = chunks(pillow_png(photo(4, 4, 3)))
    bomb = assemble([(b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)), *parts[1:]])
    assert plain_header(bomb) is not None
    with pytest.raises(ImageRejected) as big:
        decode(bomb, MAX_PIXELS)
    assert big.value.reason == "too_large"
    with pytest.raises(ImageRejected) as small:
        decode(pillow_png(photo(4, 4, 3)), MAX_PIXELS, min_side=8)
    assert small.value.reason == "too_small"


@pytest.mark.parametrize("source", [1, 3])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(16, 16), (32, 24), (7, 5)])
def test_to_array_on_pixels_is_to_array_on_the_image(source: int, channels: int, size) -> None:
    data = pillow_png(photo(16, 16, source))
    decoded = decode(data, MAX_PIXELS)
    assert isinstance(decoded, np.ndarray)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        np.testing.assert_array_equal(
            to_array(decoded, size, channels), to_array(img, size, channels)
        )
