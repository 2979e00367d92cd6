"""Image preprocessing, defined once for data preparation, training's evaluation and inference.

Policy (``PREPROCESSING_VERSION`` changes whenever any line of it changes):

1. **Accepted containers**: PNG, JPEG, WebP, BMP. Anything else (GIF, TIFF, PDF, ICO, HEIF...)
   is refused with reason ``unsupported_format`` even if Pillow could read it: fewer decoders,
   smaller attack surface, and training sees exactly what serving accepts.
2. **Size limits before pixels**: the declared width x height is read from the header and
   checked against ``max_pixels`` (reason ``too_large``) and ``min_side`` (``too_small``)
   *before* any pixel is decoded, so a 50,000 x 50,000 PNG of a few KB (a decompression bomb)
   never allocates its 7.5 GB.
3. **Full decode**: pixels are loaded completely; a file cut short is refused (``truncated``)
   rather than silently padded with grey.
4. **EXIF orientation** is applied (the image is returned upright); a malformed EXIF block is
   ignored rather than refused.
5. **Colour conversion** in :func:`to_array`: palette (with its transparency), grayscale,
   RGB, RGBA, LA, CMYK (Pillow's conversion; Adobe-inverted JPEG CMYK is handled by the
   decoder), 16-bit grayscale (``I;16*``, ``I``: 0..65535 mapped to 0..255 by rounding
   ``v * 255 / 65535``). Transparency is composited on **black**
   (``round(c * a / 255)``). Grayscale output uses ITU-R 601-2 luma (Pillow's ``L``).
6. **Resize**: the whole image to ``size = (height, width)`` with Pillow's bilinear filter
   (antialiased when shrinking); the aspect ratio is not kept and nothing is cropped.

Everything is deterministic: the same bytes give the same array on every call.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from inference import png

__all__ = [
    "ACCEPTED_FORMATS",
    "PREPROCESSING_VERSION",
    "REASONS",
    "ImageRejected",
    "decode",
    "decode_image",
    "decoded_size",
    "load_array",
    "to_array",
]

PREPROCESSING_VERSION = 1

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")

REASONS = ("empty", "undecodable", "truncated", "too_large", "too_small", "unsupported_format")

# Magic numbers of formats Pillow (or a client) may recognise but this policy refuses; a match
# gives the clearer ``unsupported_format`` instead of ``undecodable``.
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "HDR"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"icns", "ICNS"),
    (b"DDS ", "DDS"),
    (b"SIMPLE  =", "FITS"),
    (b"\x89HDF", "HDF5"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x93NUMPY", "NPY"),
)


# What Pillow's decoders raise on hostile input (besides MemoryError, handled apart).
_DECODER_ERRORS = (
    OSError,
    EOFError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
)
# Substrings of the decoder messages for a file that ends early (Pillow 10-13).
_TRUNCATION_WORDS = (
    "truncated",
    "premature",
    "end of file",
    "not enough",
    "broken data stream",
    "unexpected end",
)


class ImageRejected(ValueError):
    """An image refused by the preprocessing policy; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _sniff_other_format(data: bytes) -> str | None:
    head = data[:16]
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":  # ISO-BMFF: HEIC, AVIF
        return "HEIF/AVIF"
    if head.lstrip()[:5].lower() in (b"<?xml", b"<svg "):
        return "SVG/XML"
    return None


def _looks_cut_short(data: bytes) -> bool:
    """An accepted format's signature followed by less data than its header needs or declares."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return len(data) < 33  # signature + IHDR chunk
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return len(data) < int.from_bytes(data[4:8], "little") + 8
    if data.startswith(b"BM") and len(data) >= 6:
        return len(data) < min(int.from_bytes(data[2:6], "little"), 26)
    return data.startswith(b"\xff\xd8") and len(data) < 4


def decode(data: bytes, max_pixels: int, min_side: int = 1) -> Image.Image | np.ndarray:
    """`decode_image`, except that a plain 8-bit gray or RGB PNG (`inference.png`) comes back
    as its uint8 ``[H, W, 1 | 3]`` pixels, decoded by libspng without a Pillow image (~10x
    faster on small images). `to_array` and `decoded_size` take either."""
    if not data:
        raise ImageRejected("empty", "no bytes")
    plain = png.plain_header(data)
    if plain is not None:
        _check_size(plain.width, plain.height, max_pixels, min_side)
        try:
            pixels = png.decode_plain(data, plain)
        except MemoryError:
            raise ImageRejected("too_large", "not enough memory to decode") from None
        if pixels is not None:
            return pixels
    return _decode_with_pillow(data, max_pixels, min_side)


def decoded_size(decoded: Image.Image | np.ndarray) -> tuple[int, int]:
    """(height, width) of what `decode` returned."""
    if isinstance(decoded, np.ndarray):
        return decoded.shape[0], decoded.shape[1]
    return decoded.height, decoded.width


def decode_image(data: bytes, max_pixels: int, min_side: int = 1) -> Image.Image:
    """Decode ``data`` (PNG, JPEG, WebP or BMP bytes) into an upright, fully loaded image.

    Args:
        data: the encoded file.
        max_pixels: largest accepted ``width * height``, checked on the header's declared
            dimensions before decoding pixels.
        min_side: smallest accepted width and height, in pixels.

    Raises:
        ImageRejected: with ``reason`` ``empty``, ``unsupported_format``, ``undecodable``,
            ``too_large``, ``too_small`` or ``truncated``.
    """
    decoded = decode(data, max_pixels, min_side)
    if isinstance(decoded, np.ndarray):
        return _image_of(decoded)
    return decoded


def _image_of(pixels: np.ndarray) -> Image.Image:
    """uint8 [H, W, 1 | 3] -> an L or RGB image sharing its memory."""
    height, width, channels = pixels.shape
    mode = "L" if channels == 1 else "RGB"
    return Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1)


def _decode_with_pillow(data: bytes, max_pixels: int, min_side: int) -> Image.Image:
    buffer = io.BytesIO(data)
    try:
        img = Image.open(buffer, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own cap, above any sane max_pixels
        raise ImageRejected("too_large", str(exc)) from None
    except (UnidentifiedImageError, MemoryError, *_DECODER_ERRORS) as exc:
        if _looks_cut_short(data):
            raise ImageRejected(
                "truncated", "the file ends before its header or declared size"
            ) from None
        other = _sniff_other_format(data)
        if other is not None:
            raise ImageRejected(
                "unsupported_format",
                f"{other} is not accepted (accepted: {', '.join(ACCEPTED_FORMATS)})",
            ) from None
        raise ImageRejected(
            "undecodable", f"not a valid PNG/JPEG/WebP/BMP image ({type(exc).__name__})"
        ) from None

    try:
        _check_size(img.width, img.height, max_pixels, min_side)
    except ImageRejected:
        img.close()
        raise
    try:
        img.load()
    except _DECODER_ERRORS as exc:
        message = str(exc).lower()
        truncated = isinstance(exc, EOFError) or any(word in message for word in _TRUNCATION_WORDS)
        if truncated:
            raise ImageRejected("truncated", f"{img.format} data ends early ({exc})") from None
        raise ImageRejected("undecodable", f"{img.format} pixel data is corrupt ({exc})") from None
    except MemoryError:
        raise ImageRejected("too_large", "not enough memory to decode") from None

    return _upright(img)


def _check_size(width: int, height: int, max_pixels: int, min_side: int) -> None:
    """Policy point 2, on the header's declared size."""
    if width * height > max_pixels:
        raise ImageRejected(
            "too_large",
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
        )
    if min(width, height) < max(min_side, 1):
        raise ImageRejected(
            "too_small", f"{width}x{height}: each side must be >= {max(min_side, 1)} pixels"
        )


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block is ignored (policy point 4)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # corrupt EXIF must not reject an otherwise fine image
        return img
    if orientation in (None, 1):
        return img
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:
        return img
    return upright if upright is not None else img


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C+1] with alpha last -> uint8 [H, W, C], ``round(c * a / 255)``."""
    colour = rgba[..., :-1].astype(np.uint16)  # 255 * 255 + 127 fits: half of uint32's memory
    colour *= rgba[..., -1:]
    colour += 127
    colour //= 255
    return colour.astype(np.uint8)


def _pixels(img: Image.Image) -> tuple[np.ndarray, bool]:
    """Image -> (uint8 [H, W, 1 or 3], is_gray) with transparency composited on black."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img).astype(np.int64)
        wide = np.clip(wide, 0, 65535)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)[..., None], True
    if mode == "F":
        flt = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(np.rint(flt), 0, 255).astype(np.uint8)[..., None], True
    has_alpha = "A" in mode or "a" in mode or "transparency" in img.info
    gray = mode in ("1", "L", "LA", "La") or (mode == "P" and _gray_palette(img))
    if gray:
        if has_alpha:
            la = np.asarray(img.convert("LA"))
            return _composite_on_black(la), True
        return np.asarray(img if mode == "L" else img.convert("L"))[..., None], True
    if has_alpha:
        return _composite_on_black(np.asarray(img.convert("RGBA"))), False
    return np.asarray(img if mode == "RGB" else img.convert("RGB")), False


def _gray_palette(img: Image.Image) -> bool:
    palette = img.getpalette()  # list of ints, RGB triplets
    if not palette:
        return False
    rgb = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))


def to_array(img: Image.Image | np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """Convert and resize ``img`` to uint8 ``[height, width, channels]`` (policy points 4-6).

    Args:
        img: a decoded image (from :func:`decode_image`); its EXIF orientation is applied here
            too, so an image opened elsewhere gets the same treatment. Or the uint8
            ``[H, W, 1 | 3]`` gray or RGB pixels :func:`decode` returns for a plain PNG.
        size: ``(height, width)`` of the result, in pixels.
        channels: 1 (grayscale, ITU-R 601-2 luma) or 3 (RGB).
    """
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if isinstance(img, np.ndarray):
        return _convert_array(img, height, width, channels)
    img = _upright(img)
    if img.mode in ("L", "RGB") and "transparency" not in img.info:
        return _convert_plain(img, height, width, channels)
    pixels, is_gray = _pixels(img)
    return _convert_pixels(pixels, is_gray, height, width, channels)


def _convert_plain(img: Image.Image, height: int, width: int, channels: int) -> np.ndarray:
    """8-bit L or RGB without transparency, converted and resized as Pillow images: what
    `_convert_pixels` computes, pixel for pixel, without two round trips through numpy (2x
    faster on small images). Gray to RGB is resized as one band, then replicated: Pillow's
    bilinear filter treats each band alike, so the result is the same."""
    if channels == 1 and img.mode == "RGB":
        img = img.convert("L")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    # the bytes straight from tobytes(): np.asarray(img) makes the same read-only array through
    # Pillow's __array_interface__ in 23 us for 32x32 RGB, against 9 us (Pillow 13)
    out = np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(height, width, -1)
    if channels == 3 and out.shape[-1] == 1:
        return np.repeat(out, 3, axis=2)
    return out


def _convert_array(pixels: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
    """Plain gray or RGB pixels -> `_convert_plain`'s result, without a Pillow image when the
    size is kept (a copy through Pillow costs more than libspng's decode)."""
    if pixels.shape[:2] == (height, width):
        if pixels.shape[2] == channels:
            return pixels
        if channels == 3:
            return np.repeat(pixels, 3, axis=2)
    return _convert_plain(_image_of(pixels), height, width, channels)


def _convert_pixels(
    pixels: np.ndarray, is_gray: bool, height: int, width: int, channels: int
) -> np.ndarray:
    """uint8 [H, W, 1 or 3] from `_pixels` -> uint8 [height, width, channels]."""
    if is_gray == (channels == 1) and pixels.shape[:2] == (height, width):
        return np.ascontiguousarray(pixels)  # already what the model takes: no round trip
    if channels == 3:
        mode_img = Image.fromarray(np.repeat(pixels, 3, axis=2) if is_gray else pixels)
    elif is_gray:
        mode_img = Image.fromarray(pixels[..., 0])
    else:
        mode_img = Image.fromarray(pixels).convert("L")
    if mode_img.size != (width, height):
        mode_img = mode_img.resize((width, height), Image.Resampling.BILINEAR)
    out = np.asarray(mode_img, dtype=np.uint8)
    if out.ndim == 2:
        out = out[..., None]
    return np.ascontiguousarray(out)


def load_array(
    data: bytes, size: tuple[int, int], channels: int, max_pixels: int, min_side: int = 1
) -> np.ndarray:
    """``to_array(decode(data, max_pixels, min_side), size, channels)`` in one call."""
    img = decode(data, max_pixels, min_side)
    try:
        return to_array(img, size, channels)
    except MemoryError:
        raise ImageRejected("too_large", "not enough memory to convert") from None
