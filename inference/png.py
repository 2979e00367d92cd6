"""The fast path for plain 8-bit PNGs: libspng (``pyspng``) instead of Pillow's PNG plugin.

Pillow spends ~45-60 us opening and loading a small PNG, most of it in its Python-level
plugin; libspng decodes the same 16-32 px image in ~4-8 us (docs/benchmarks.md, stop 27), so for the
small images a classifier usually sees, decoding stops being most of data preparation's and
the endpoint's work. The pixels are the same (PNG is lossless and neither decoder applies
gamma or colour profiles; tests/unit/test_inference_png.py compares the two on every filter,
split pixel data and chunk layout).

Only files whose result cannot differ from Pillow's take this path, judged from the chunk list
before any pixel is decoded: 8-bit grayscale or RGB (colour types 0 and 2), no transparency
(``tRNS``), not interlaced, no text chunks (Pillow reads EXIF and XMP orientation from them),
no ``eXIf``, not animated, every chunk's CRC valid, and a complete ``IEND``. Everything else, and any file
libspng refuses, goes to Pillow, which classifies it as it always did.

The CRCs are checked here because pyspng tells libspng to use data whatever its checksums say,
which also turns off zlib's Adler-32 check: a flipped bit in the pixel data fails its chunk's
CRC and goes to Pillow, which refuses it (checking the CRCs costs ~1 us a 3 KB image, 53 us a
150 KB one, 5% of its decode). One difference is left, for files made on purpose: an ``IDAT``
stream whose Adler-32 is wrong under a CRC recomputed to match it is decoded here, where
Pillow refuses it.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np
import pyspng

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary chunks Pillow records in ``info`` without changing the pixels `to_array` computes
# for 8-bit gray or RGB (gamma, chromaticities, colour profile, physical size, time,
# significant bits, background colour). Any other chunk sends the file to Pillow.
_HARMLESS = frozenset({b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"pHYs", b"tIME", b"sBIT", b"bKGD"})
_COLOUR_CHANNELS = {0: 1, 2: 3}  # grayscale, truecolour
_CHUNK = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")


class PlainPng(NamedTuple):
    width: int
    height: int
    channels: int  # 1 (L) or 3 (RGB)


def plain_header(data: bytes) -> PlainPng | None:
    """The size of a PNG that libspng decodes exactly as Pillow would; None for any other file
    (another format, another colour type or depth, a chunk that matters, a bad CRC, cut short).
    Reads only chunk headers and the small chunks' CRCs, never the pixel data."""
    if len(data) < 57 or not data.startswith(_SIGNATURE):  # signature, IHDR, IDAT, IEND
        return None
    length, kind = _CHUNK.unpack_from(data, 8)
    if kind != b"IHDR" or length != 13:
        return None
    width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack_from(data, 16)
    channels = _COLOUR_CHANNELS.get(colour)
    if depth != 8 or channels is None or compression or filtering or interlace:
        return None
    if not width or not height:  # Pillow's verdict on an empty image stands
        return None
    view, pos, size = memoryview(data), 8, len(data)
    idat = 0  # 0: before the IDAT chunks, 1: among them, 2: after (one more is malformed)
    while pos + 12 <= size:
        length, kind = _CHUNK.unpack_from(data, pos)
        end = pos + 12 + length
        if end > size:
            return None
        if kind == b"IDAT":
            if idat == 2:
                return None
            idat = 1
        elif not (kind in _HARMLESS or kind == b"IEND" or pos == 8):
            return None
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return None
        if kind == b"IEND":
            return PlainPng(width, height, channels) if idat else None
        idat = 2 if idat and kind != b"IDAT" else idat
        pos = end
    return None


def is_bare(data: bytes) -> bool:
    """A file `plain_header` accepted holds nothing but the signature, IHDR, IDAT chunks and
    IEND, and no byte after it: the pixel data alone, as the dataset's own encoder writes it, so
    Prepare can store the file as it is (pipelines/prepare/decode.py). Reads chunk headers only
    (`plain_header` checked the CRCs)."""
    pos, size = 8, len(data)
    while pos + 12 <= size:
        length, kind = _CHUNK.unpack_from(data, pos)
        pos += 12 + length
        if kind == b"IEND":
            return pos == size
        if kind not in (b"IHDR", b"IDAT"):
            return False
    return False


def decode_plain(data: bytes, header: PlainPng) -> np.ndarray | None:
    """uint8 ``[H, W, C]`` pixels of a file `plain_header` accepted; None if libspng refuses
    it (corrupt or cut-short pixel data: Pillow then says which). MemoryError propagates."""
    try:
        pixels = pyspng.load(data)
    except MemoryError:
        raise
    except Exception:  # libspng's errors arrive as RuntimeError; any other refusal is the same
        return None
    expected = (header.height, header.width)
    if pixels.dtype != np.uint8 or pixels.shape[:2] != expected:
        return None
    return pixels.reshape(header.height, header.width, header.channels)
