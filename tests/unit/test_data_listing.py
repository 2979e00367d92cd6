"""Local files: what a listing finds and records, the fingerprint's rows, reading them whole."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pipelines.prepare import items as items_module
from pipelines.prepare import reading
from pipelines.prepare.items import Listing, RawItem
from pipelines.prepare.sources import list_source
from tests.fixtures_data import plant_bad_files


def _walk_keys(top: Path) -> set[str]:
    """What `os.walk(followlinks=False)` finds: files, and symlinked folders as `name/`."""
    keys = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        rel = Path(dirpath).relative_to(top).as_posix()
        prefix = "" if rel == "." else rel + "/"
        keys.update(prefix + n for n in filenames)
        keys.update(prefix + n + "/" for n in dirnames if os.path.islink(os.path.join(dirpath, n)))
    return keys


def test_a_listing_by_name_finds_what_os_walk_finds_as_the_hashing_listing_does(
    raw_mnist_copy: Path, tmp_path: Path
) -> None:
    """Nested folders, symlinks inside and outside, a dangling one and a symlinked folder: the
    listing by name (a first run's) finds every entry `os.walk` finds and records each exactly
    as the hashing listing does, but for the size and hash (-1 and "": its reader learns them),
    a dangling symlink unreadable in both."""
    plant_bad_files(raw_mnist_copy, tmp_path / "outside")
    deep = raw_mnist_copy / "6" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "deep.png").write_bytes((raw_mnist_copy / "loose.png").read_bytes())
    os.symlink(deep / "deep.png", raw_mnist_copy / "6" / "link-inside.png")
    os.symlink(raw_mnist_copy / "6" / "gone.png", raw_mnist_copy / "6" / "dangling.png")
    hashing = list_source(str(raw_mnist_copy), None).items
    named = list_source(str(raw_mnist_copy), None, names_only=True).items
    assert [it.key for it in named] == sorted(_walk_keys(raw_mnist_copy))
    assert named == [RawItem(it.key, it.label, it.location, -1, "", it.issue) for it in hashing]
    by_key = {it.key: it for it in hashing}
    assert by_key["6/a/b/deep.png"].label == "6" and by_key["6/link-inside.png"].issue is None
    assert by_key["6/dangling.png"].issue[0] == "unreadable"  # type: ignore[index]
    assert by_key["3/link-outside.png"].issue[0] == "unsafe_key"  # type: ignore[index]
    assert by_key["8-linked-folder/"].issue[0] == "unsafe_key"  # type: ignore[index]
    assert by_key["6/link-inside.png"].size == (deep / "deep.png").stat().st_size


def test_the_fingerprint_hashes_one_json_row_per_item(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint is what every manifest records, so its rows stay the JSON they have
    always been (escapes, non-ASCII, None, negative and non-int sizes alike), in any block."""
    items = [
        RawItem("c0/a.png", "c0", "/r/c0/a.png", 12, "sha256:ab"),
        RawItem(
            'q"\\/é中\U0001f600\x00\x1f\x7f\u2028.png', "café", "/r/q", -1, "", ("unreadable", "x")
        ),
        RawItem("loose", None, "s3://b/loose", 0, 'e"t', ("unknown_label", "y")),
        RawItem("t.png", "t", "/r/t.png", True, ""),  # type: ignore[arg-type]
    ]
    rows = [
        json.dumps([it.key, it.label, it.size, it.etag, it.issue[0] if it.issue else None]) + "\n"
        for it in items
    ]
    want = hashlib.sha256("".join(rows).encode()).hexdigest()
    assert Listing("x", items).fingerprint() == want
    monkeypatch.setattr(items_module, "_FINGERPRINT_BLOCK", 3)
    assert Listing("x", items).fingerprint() == want
    assert Listing("x", items[1:]).fingerprint() != want


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, (1 << 20) + 3, 3 * (1 << 20)])
def test_a_local_file_is_read_whole_whatever_its_listed_size(tmp_path: Path, size: int) -> None:
    """The listed size only sizes the first read: a file grown, shrunk or emptied since it was
    listed is read as it is now."""
    path = tmp_path / "f.png"
    data = os.urandom(size)
    path.write_bytes(data)
    for hint in {0, -1, 1, size - 1, size, size + 1, 2 * size + 7}:
        assert reading.read_local(str(path), hint) == data
    if size:  # unlisted, a file over the limit is refused unread; a listed one was screened
        with pytest.raises(reading.TooLarge, match=f"^{size} bytes > max_file_bytes {size - 1}$"):
            reading.read_local(str(path), -1, max_bytes=size - 1)
        assert reading.read_local(str(path), size, max_bytes=size - 1) == data
    assert reading.read_local(str(path), -1, max_bytes=size) == data
    with pytest.raises(FileNotFoundError):
        reading.read_local(str(tmp_path / "gone.png"), 10)
    with pytest.raises(IsADirectoryError):
        reading.read_local(str(tmp_path), 10)
