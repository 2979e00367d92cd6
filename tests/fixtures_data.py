"""Fixtures for data tests (see tests/conftest.py): real MNIST PNGs in ImageFolder layout, and
planted bad files of every quarantine reason.

`raw_mnist_dir` is session-scoped and shared: treat it as read-only (copy it to change it).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MNIST_PER_CLASS = 30  # 300 images: enough for every class in every split, fast to prepare


def mnist_subset(per_class: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels [N], mnist indices [N]): `per_class` of each digit,
    skipping the first `offset` of each (so two subsets can be disjoint)."""
    from pipelines.prepare.importers import builtin_arrays

    images, labels = builtin_arrays("mnist-5k")
    picked = np.concatenate(
        [np.flatnonzero(labels == c)[offset : offset + per_class] for c in range(10)]
    )
    picked.sort()
    return images[picked], labels[picked], picked


def write_image_folder(
    root: Path, images: np.ndarray, labels: np.ndarray, ids: np.ndarray
) -> list[str]:
    """Write `<root>/<label>/mnist-<id>.png`; returns the relative keys."""
    from pipelines.prepare.importers import png_bytes

    keys = []
    for img, label, i in zip(images, labels, ids, strict=True):
        key = f"{int(label)}/mnist-{int(i):05d}.png"
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(img))
        keys.append(key)
    return keys


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# Config that makes the planted files below hit the intended reasons.
PLANT_MAX_PIXELS = 100_000
PLANT_MIN_SIDE = 8


def plant_bad_files(root: Path, outside: Path) -> dict[str, str]:
    """Add one file per quarantine reason (plus odd-but-good images) to an mnist ImageFolder.

    Returns {key: expected reason}; good extra images map to "" (they must be used). Needs
    classes 3, 4 and 7 with mnist images already present; `outside` is a folder outside
    `root` for a symlink target. Use with max_pixels=PLANT_MAX_PIXELS, min_side=PLANT_MIN_SIDE.
    """
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    good_png = encode(noise, "PNG")
    three = sorted((root / "3").iterdir())[0]  # the first key of class 3
    four = sorted((root / "4").iterdir())[0]
    files: dict[str, tuple[bytes, str]] = {
        "3/empty.png": (b"", "empty"),
        "3/garbage.png": (rng.integers(0, 256, 500, dtype=np.uint8).tobytes(), "undecodable"),
        "3/truncated.png": (good_png[: len(good_png) // 2], "truncated"),
        "3/tiny.png": (encode(Image.new("L", (4, 4), 200), "PNG"), "too_small"),
        "3/huge.png": (encode(Image.new("L", (400, 400), 10), "PNG"), "too_large"),
        "3/animated.png": (encode(Image.new("P", (16, 16)), "GIF"), "unsupported_format"),
        "3/notes.txt": (b"not an image", "unknown_extension"),
        "3/.DS_Store": (b"\x00\x00\x00\x01Bud1", "unknown_extension"),
        "loose.png": (good_png, "unknown_label"),
        "3\u200b/zero-width-class.png": (encode(Image.new("L", (9, 9), 1), "PNG"), "unknown_label"),
        f"3/zz-copy-of-{three.name}": (three.read_bytes(), "duplicate"),
        f"5/conflict-{four.name}": (four.read_bytes(), "duplicate_conflicting_labels"),
        f"4/{four.name}": (four.read_bytes(), "duplicate_conflicting_labels"),  # the original
        # Odd but good: every mode and container the policy accepts.
        "7/rgba.png": (
            encode(
                Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA"), "PNG"
            ),
            "",
        ),
        "7/palette.png": (encode(noise.resize((30, 30)).convert("P"), "PNG"), ""),
        "7/gray16.png": (
            encode(Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)), "PNG"),
            "",
        ),
        "7/photo.jpg": (encode(noise, "JPEG", quality=90), ""),
        "7/photo.webp": (encode(noise.resize((40, 40)), "WEBP", lossless=True), ""),
        "7/photo.bmp": (encode(noise.resize((12, 20)), "BMP"), ""),
        "7/ünïcødé ｆｉｌｅ.PNG": (encode(noise.resize((16, 16)), "PNG"), ""),
    }
    for key, (data, _) in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.png").write_bytes(encode(Image.new("L", (10, 10), 3), "PNG"))
    os.symlink(outside / "secret.png", root / "3" / "link-outside.png")
    os.symlink(outside, root / "8-linked-folder", target_is_directory=True)
    expected = {key: reason for key, (_, reason) in files.items()}
    expected["3/link-outside.png"] = "unsafe_key"
    expected["8-linked-folder/"] = "unsafe_key"  # reported, not followed
    return expected


@pytest.fixture(scope="session")
def raw_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only ImageFolder of 300 real MNIST PNGs: `<root>/<digit>/mnist-<id>.png`."""
    root = tmp_path_factory.mktemp("raw-mnist") / "mnist"
    images, labels, ids = mnist_subset(MNIST_PER_CLASS)
    write_image_folder(root, images, labels, ids)
    return root


@pytest.fixture()
def raw_mnist_copy(raw_mnist_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of `raw_mnist_dir`."""
    dest = tmp_path / "raw"
    shutil.copytree(raw_mnist_dir, dest)
    return dest


def png_declaring(width: int, height: int, idat_zeros: int = 4096) -> bytes:
    """A tiny PNG whose header declares ``width x height`` (a decompression bomb's shape); its
    pixel data is `idat_zeros` zero bytes, compressed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * idat_zeros))
        + chunk(b"IEND", b"")
    )
