"""What a listing is made of: `RawItem` (one input file as listed), `Listing` (all of them, and
the raw-data fingerprint over them) and the rules every listing shares (labels, extensions).

Keys are only ever *reported*; nothing turns a key into an output path, so ``../``, absolute
paths or odd Unicode cannot escape the output folder. Labels are validated (see
`clean_label`); a bad one quarantines the file as ``unknown_label``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import unicodedata
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _encode_ascii  # type: ignore[attr-defined]
from typing import NamedTuple

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_LABEL_MAX_CHARS = 200


class RawItem(NamedTuple):
    """One listed input file: where it is, its label, and what the listing saw. A named tuple:
    made ~1 us faster than a frozen dataclass (1,000,000 are made twice in a first run), and
    pickled smaller on the way to the decode workers."""

    key: str  # reported name: path relative to the input root, or the manifest's source-ref
    label: str | None  # cleaned class name; None when there is none or it is invalid
    location: str  # absolute local path or s3:// URI
    size: int  # bytes, as listed (-1 when unknown)
    etag: str  # S3 ETag without quotes, or "sha256:<hex>" of a local file's content
    issue: tuple[str, str] | None = None  # (reason, detail) known before reading


@dataclass
class Listing:
    """Everything found under an input, sorted by key (ties by position)."""

    source: str
    items: list[RawItem] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 over (key, label, size, etag) of every item: changes iff the raw data does."""
        digest = hashlib.sha256()
        for start in range(0, len(self.items), _FINGERPRINT_BLOCK):
            block = self.items[start : start + _FINGERPRINT_BLOCK]
            digest.update("".join(map(_fingerprint_line, block)).encode())
        return digest.hexdigest()


_FINGERPRINT_BLOCK = 65536  # rows hashed at a time (~6 MB of text)


def _json(text: str | None) -> str:
    return "null" if text is None else _encode_ascii(text)


def _fingerprint_line(it: RawItem) -> str:
    """`json.dumps([key, label, size, etag, reason], ensure_ascii=True) + "\n"`, the row the
    fingerprint has always hashed, built from json's own string encoder: 3x faster."""
    key, label, _, size, etag, issue = it  # unpacked: faster than five attribute reads
    reason = issue[0] if issue else None
    if type(size) is not int:  # never from a listing; kept exact all the same
        return json.dumps([key, label, size, etag, reason]) + "\n"
    return f"[{_json(key)}, {_json(label)}, {size}, {_json(etag)}, {_json(reason)}]\n"


def clean_label(raw: object) -> str | None:
    """NFC-normalised class name, or None if it cannot be one (empty, '.', '..', a separator,
    control or format characters, surrounding whitespace, too long)."""
    if not isinstance(raw, str):
        return None
    label = unicodedata.normalize("NFC", raw)
    if label in ("", ".", "..") or label != label.strip() or len(label) > _LABEL_MAX_CHARS:
        return None
    if "/" in label or "\\" in label:
        return None
    if any(unicodedata.category(ch)[0] == "C" for ch in label):  # Cc, Cf, Cs, Co, Cn
        return None
    return label


def has_image_extension(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def sha256_file(path: str) -> tuple[int, str]:
    """(size, "sha256:<hex>") of a local file's content."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size <= 1 << 20:  # the common case: one read
            data = fh.read()
            return len(data), "sha256:" + hashlib.sha256(data).hexdigest()
        digest = hashlib.file_digest(fh, "sha256")
        return fh.tell(), "sha256:" + digest.hexdigest()


@functools.lru_cache(maxsize=65536)
def _folder_label(folder: str) -> str | None:
    """`clean_label` of a class folder's name, interned: computed once per folder, not per file
    (a third of listing a small file)."""
    label = clean_label(folder)
    return sys.intern(label) if label is not None else None


def item_from_key(key: str, location: str, size: int, etag: str) -> RawItem:
    """ImageFolder rule: the first path component of `key` is the label."""
    parts = key.split("/")
    if len(parts) < 2:
        return RawItem(
            key, None, location, size, etag, ("unknown_label", "not inside a class folder")
        )
    label = _folder_label(parts[0])
    # a valid label is none of "", "." and "..", so looking for them in every part is enough
    if label is None or "" in parts or "." in parts or ".." in parts:
        return RawItem(
            key,
            None,
            location,
            size,
            etag,
            ("unknown_label", f"unusable class folder or path {parts[0]!r}"),
        )
    return RawItem(key, label, location, size, etag)
