"""WebDataset tar shards (docs/contracts.md "Dataset"): writing and reading one shard, and the
image codecs inside it. numpy, libdeflate (``deflate``), libspng (``inference.png``), tarfile and (for
WebP/JPEG and other PNGs) Pillow.

A shard is a plain POSIX (ustar) tar whose members come in pairs sharing a key, the WebDataset
layout: ``<key>.png`` (or ``.webp`` / ``.jpg``) holding the encoded image and ``<key>.cls``
holding its class index as ASCII digits. Any tar tool, the ``webdataset`` library
(``wds.WebDataset(url).decode("pil").to_tuple("png", "cls")``) or this module reads it.

Written deterministically (fixed mtime, owner and mode, fixed member order), so the same
samples always give the same bytes and the same sha256.

Two pieces are this project's own code, because measurement showed the library path was the
bottleneck (bench/data_scale.py, 32x32 RGB, 2 CPU cores):
- PNG: a minimal encoder (8-bit gray/RGB, every row with the "Up" filter, libdeflate level 2,
  level 1 from about 37x37 RGB up);
  Pillow's encoder took ~100 us an image (Python-level plugin overhead), more than the rest of
  Prepare. A bare input PNG that needs no conversion is stored as it is instead
  (pipelines/prepare/decode.py), so a shard may hold other encoders' PNGs too. Decoding is
  libspng's (`inference.png`: 5-6 us a 32 px image, against 19-30 us for the libdeflate
  decoder of these files this module had, and ~120 us for Pillow); any PNG it does not take
  (palette, 16-bit, transparency) is decoded by Pillow.
- tar: a ustar writer and a bounds-checked reader over a shard's bytes (a shard is read and
  verified whole first): ``tarfile`` cost ~110 us a sample to write and ~120 us to read (member
  objects, file-like copies), 4x this module's; the bytes are those ``tarfile`` writes for
  the same members (tested), and ``tarfile``/``webdataset`` read them.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import deflate
import numpy as np

from inference.png import decode_plain, plain_header

ENCODINGS = ("png", "webp", "jpeg")
EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
IMAGE_EXTENSIONS = ("png", "webp", "jpg", "jpeg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# libdeflate level 2 against zlib level 1 (what this used), per image on one core: 32 px crops
# of photos 55 us vs 95 us, same size; 224 px crops 2.2 ms vs 3.9 ms, 4.5% smaller; 28 px MNIST
# 28 us vs 35 us, +0.7%. Past _PNG_FAST_FROM filtered bytes (about 37x37 RGB) level 1: on
# sklearn's two sample photos resized to 64, 224 px and whole (427x640) it took 0.57-0.71x
# level 2's time for -3% to +1.9% bytes; below it level 2, where level 1 made an MNIST digit
# resized to 32 px RGB 12% larger (tar blocks round that up to 1.5x) and saves a few us.
_PNG_LEVEL, _PNG_FAST_LEVEL, _PNG_FAST_FROM = 2, 1, 4096
_BLOCK = 512


class ShardFormatError(ValueError):
    """A shard's bytes are not a well-formed sample tar (the caller names the shard)."""


class Sample(NamedTuple):
    key: str
    ext: str  # image member extension: png, webp, jpg
    image: bytes  # encoded image
    label: int


# ---------------------------------------------------------------------------------------------
# Image codecs
# ---------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes | bytearray) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 ``[H, W, C]`` (C = 1 or 3) -> PNG bytes, every row "Up"-filtered (deterministic)."""
    h, w, c = pixels.shape
    if c not in (1, 3) or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 [H, W, 1|3], got {pixels.dtype} {pixels.shape}")
    rows = np.ascontiguousarray(pixels).reshape(h, w * c)
    raw = np.empty((h, w * c + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up: row minus the row above (the first row sees zeros)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps, as PNG wants
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    level = _PNG_FAST_LEVEL if raw.size >= _PNG_FAST_FROM else _PNG_LEVEL
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", deflate.zlib_compress(raw.tobytes(), level))
        + _png_chunk(b"IEND", b"")
    )


def encode_image(pixels: np.ndarray, encoding: str, quality: int = 90) -> bytes:
    """uint8 ``[H, W, C]`` -> encoded bytes (png: lossless; webp: lossless; jpeg: `quality`)."""
    if encoding == "png":
        return encode_png(pixels)
    from PIL import Image

    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buf = io.BytesIO()
    if encoding == "webp":
        img.save(buf, format="WEBP", lossless=True, quality=100, method=0, exact=True)
    elif encoding == "jpeg":
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; choose from {ENCODINGS}")
    return buf.getvalue()


def decode_pixels(data: bytes, ext: str, channels: int) -> np.ndarray:
    """Encoded image -> uint8 ``[H, W, channels]``; raises ValueError if it cannot."""
    if ext == "png":  # libspng for the gray and RGB PNGs a dataset holds (inference/png.py)
        header = plain_header(data)
        if header is not None and header.channels == channels:
            pixels = decode_plain(data, header)
            if pixels is not None:
                return pixels
    from PIL import Image

    formats = {"png": ["PNG"], "webp": ["WEBP"], "jpg": ["JPEG"], "jpeg": ["JPEG"]}.get(ext)
    if formats is None:
        raise ValueError(f"not an image member extension: {ext!r}")
    from inference.preprocess import to_array  # the one conversion policy (alpha, 16-bit, ...)

    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:
            img.load()
            return to_array(img, (img.height, img.width), channels)
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode {ext}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Tar shards
# ---------------------------------------------------------------------------------------------
# Every member's header is one template (mode 0644, owner 0:0, mtime 0, no user names, as
# ``tarfile`` writes ustar) with its name, size and checksum filled in, many members at once.
_TEMPLATE = np.frombuffer(
    (
        b"\0" * 100  # name
        + b"0000644\0"  # mode
        + b"0000000\0"  # uid
        + b"0000000\0"  # gid
        + b"\0" * 12  # size
        + b"00000000000\0"  # mtime
        + b" " * 8  # the checksum counts its own field as 8 spaces
        + b"0"  # regular file
        + b"\0" * 100  # link name
        + b"ustar\x0000"
    ).ljust(_BLOCK, b"\0"),
    dtype=np.uint8,
)
_MAX_MEMBER = 8**11 - 1  # what an 11-digit octal size field holds
_HEADERS_AT_ONCE = 8192  # 4 MB of headers built at a time (a whole shard's could be ~40 MB)


def _octal(values: np.ndarray, digits: int) -> np.ndarray:
    """``[N, digits]`` ASCII octal digits of non-negative ints, zero-padded."""
    shifts = 3 * np.arange(digits - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] >> shifts) & 7).astype(np.uint8) + ord("0")


def sample_frame(
    keys: Sequence[str], exts: Sequence[str], image_sizes: np.ndarray, labels: Sequence[int]
) -> tuple[bytearray, np.ndarray]:
    """A shard's ustar bytes (``<key>.<ext>`` then ``<key>.cls`` per sample, ending as
    ``tarfile`` ends an archive: two zero blocks, padded to a 10,240-byte record) with every
    header and label written, and the byte offset of each sample's image, left as zeros for
    the caller to copy in from wherever it is (Prepare: straight from its spill files).

    Headers are built as ``[members, 512]`` arrays, 8,192 members at a time; padding is the
    buffer's own zeros.
    """
    names: list[bytes] = []
    for key, ext in zip(keys, exts, strict=True):
        names += (f"{key}.{ext}".encode(), f"{key}.cls".encode())
    too_long = [n for n in names if len(n) > 100]
    if too_long:
        raise ValueError(f"member name over 100 bytes: {too_long[0].decode()!r}")
    label_bytes = [b"%d" % label for label in labels]
    sizes = np.zeros(len(names), dtype=np.int64)
    sizes[0::2] = image_sizes
    sizes[1::2] = [len(b) for b in label_bytes]
    if len(sizes) and sizes.max() > _MAX_MEMBER:
        raise ValueError(f"member over {_MAX_MEMBER} bytes")
    starts = np.zeros(len(sizes), dtype=np.int64)  # first block of each member's header
    np.cumsum(1 + (sizes[:-1] + _BLOCK - 1) // _BLOCK, out=starts[1:])
    used = int(starts[-1] + 1 + (sizes[-1] + _BLOCK - 1) // _BLOCK) if len(sizes) else 0
    per_record = tarfile.RECORDSIZE // _BLOCK
    out = bytearray(-(-(used + 2) // per_record) * per_record * _BLOCK)
    blocks = np.frombuffer(out, dtype=np.uint8).reshape(-1, _BLOCK)
    for a in range(0, len(sizes), _HEADERS_AT_ONCE):
        b = min(a + _HEADERS_AT_ONCE, len(sizes))
        headers = np.tile(_TEMPLATE, (b - a, 1))
        headers[:, :100] = np.frombuffer(
            b"".join(n.ljust(100, b"\0") for n in names[a:b]), dtype=np.uint8
        ).reshape(-1, 100)
        headers[:, 124:135] = _octal(sizes[a:b], 11)
        headers[:, 135] = 0
        headers[:, 148:154] = _octal(headers.sum(axis=1, dtype=np.int64), 6)
        headers[:, 154:156] = (0, ord(" "))
        blocks[starts[a:b]] = headers
    del blocks
    offsets = (starts + 1) * _BLOCK
    with memoryview(out) as view:
        for at, data in zip(offsets[1::2].tolist(), label_bytes, strict=True):
            view[at : at + len(data)] = data
    return out, offsets[0::2]


def tar_bytes(samples: Iterable[Sample]) -> bytearray:
    """Samples -> deterministic ustar bytes, laid out by `sample_frame`."""
    samples = list(samples)
    images = [s.image for s in samples]
    out, offsets = sample_frame(
        [s.key for s in samples],
        [s.ext for s in samples],
        np.fromiter(map(len, images), dtype=np.int64, count=len(images)),
        [s.label for s in samples],
    )
    with memoryview(out) as view:
        for at, data in zip(offsets.tolist(), images, strict=True):
            view[at : at + len(data)] = data
    return out


def tar_members(data: bytes, checksums: bool = True) -> Iterator[tuple[str, bytes]]:
    """(name, content) of every regular member, in order; ShardFormatError on malformed bytes.
    Header checksums are checked unless the caller verified the whole shard's sha256."""
    pos, end, zero = 0, len(data), b"\0" * _BLOCK
    while pos + _BLOCK <= end:
        header = data[pos : pos + _BLOCK]
        if header == zero:
            return  # end-of-archive marker
        try:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError as exc:
            raise ShardFormatError(f"bad tar header at byte {pos}") from exc
        if checksums and stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise ShardFormatError(f"tar header checksum mismatch at byte {pos}")
        name = header[0:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
        start = pos + _BLOCK
        if start + size > end:
            raise ShardFormatError(f"truncated: member at byte {pos} needs {size} bytes")
        if header[156:157] in (b"0", b"\0"):
            full = (prefix + b"/" + name if prefix else name).decode("utf-8", "replace")
            yield full, data[start : start + size]
        pos = start + -(-size // _BLOCK) * _BLOCK
    raise ShardFormatError("truncated: no end-of-archive marker")


def iter_samples(data: bytes, checksums: bool = True) -> Iterator[Sample]:
    """The samples of one shard in order; ShardFormatError if a sample is incomplete."""
    key, ext, image = "", "", b""
    for name, content in tar_members(data, checksums):
        stem, dot, suffix = name.rpartition(".")
        if not dot:
            raise ShardFormatError(f"member {name!r} has no extension")
        if suffix in IMAGE_EXTENSIONS:
            if image:
                raise ShardFormatError(f"sample {key!r} has no .cls member")
            key, ext, image = stem, suffix, content
        elif suffix == "cls":
            if stem != key or not image:
                raise ShardFormatError(f"label {name!r} does not follow its image")
            try:
                label = int(content.decode("ascii"))
            except ValueError as exc:
                raise ShardFormatError(f"label {name!r} is not an integer") from exc
            yield Sample(key, ext, image, label)
            image = b""
    if image:
        raise ShardFormatError(f"sample {key!r} has no .cls member")
