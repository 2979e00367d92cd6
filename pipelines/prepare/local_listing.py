"""Listing a local ImageFolder: one `os.scandir` walk, then each file sized and content-hashed
(on every core when there are many) or, for a first run whose decode workers size and hash
each file as they read it, listed by name alone.

Symlinks leading outside the input are quarantined (``unsafe_key``); symlinked folders are
reported, not followed; an unreadable file is quarantined (``unreadable``), never dropped.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
from collections.abc import Iterator

from pipelines.prepare.errors import SourceError
from pipelines.prepare.items import Listing, RawItem, item_from_key, sha256_file

PARALLEL_LISTING = 20_000  # local files from which listing hashes on a process pool


def _escapes(real_top: str, key: str, path: str) -> RawItem | None:
    """The quarantine entry of a symlink leading outside the input; None if it stays inside."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, real_top]) != real_top:
        return RawItem(key, None, path, -1, "", ("unsafe_key", "symlink leads outside the input"))
    return None


def listed_item(real_top: str, entry: tuple[str, str]) -> RawItem:
    """One listed local file, content-hashed, or quarantined if unsafe or unreadable; an empty
    path is a symlinked folder."""
    key, path = entry
    if not path:
        return RawItem(key, None, "", -1, "", ("unsafe_key", "symlinked folder, not followed"))
    if os.path.islink(path) and (outside := _escapes(real_top, key, path)) is not None:
        return outside
    try:
        size, etag = sha256_file(path)
    except OSError as exc:
        return RawItem(key, None, path, -1, "", ("unreadable", str(exc)))
    return item_from_key(key, path, size, etag)


def _named_item(real_top: str, key: str, entry: os.DirEntry[str]) -> RawItem:
    """What `listed_item` records for a directory entry, less its size and content hash, which
    its reader learns (`reading.read_local`): the entry's type came with the folder's
    listing, so a plain file costs no system call here (a stat by path was ~5 of ~10 us a
    file). A symlink is followed, so that a dangling one is unreadable here as it is there."""
    if _is_link(entry):
        if (outside := _escapes(real_top, key, entry.path)) is not None:
            return outside
        try:
            entry.stat()
        except OSError as exc:
            return RawItem(key, None, entry.path, -1, "", ("unreadable", str(exc)))
    return item_from_key(key, entry.path, -1, "")


def _is_link(entry: os.DirEntry[str]) -> bool:
    """`os.path.islink` of a directory entry: False when its type cannot be known."""
    try:
        return entry.is_symlink()
    except OSError:
        return False


def _walk(top: str) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
    """(key, entry) of every file under `top`, and (key + "/", None) of every symlinked folder
    (not followed); what `os.walk(top, followlinks=False)` finds, without its own stat calls.
    OSError if a folder cannot be read."""
    stack = [("", top)]
    while stack:
        rel, folder = stack.pop()
        with os.scandir(folder) as found:
            for entry in found:
                try:
                    is_dir = entry.is_dir()
                except OSError:  # as os.walk: an entry whose type cannot be known is a file
                    is_dir = False
                if not is_dir:
                    yield rel + entry.name, entry
                elif _is_link(entry):
                    yield rel + entry.name + "/", None
                else:
                    stack.append((rel + entry.name + "/", entry.path))


def list_local_folder(root: str, names_only: bool = False) -> Listing:
    """Every file under a local folder, sized and content-hashed (so the fingerprint survives
    a copy, e.g. SageMaker downloading the input afresh), or with `names_only` by name alone
    (size -1, no etag: for readers that learn both as they read, `spill.with_read_hashes`).
    Symlinks leading outside are quarantined; symlinked folders are reported, not followed."""
    top = os.path.abspath(root)
    if not os.path.isdir(top):
        raise SourceError(f"input folder {root!r} does not exist or is not a folder")
    real_top = os.path.realpath(top)
    found: list[tuple[str, str]] = []
    items: list[RawItem] = []
    try:
        for key, entry in _walk(top):
            if entry is None:
                items.append(listed_item(real_top, (key, "")))
            elif names_only:
                items.append(_named_item(real_top, key, entry))
            else:
                found.append((key, entry.path))
    except OSError as exc:
        raise SourceError(f"cannot read input folder {root!r}: {exc}") from exc
    if not found and not items:
        raise SourceError(f"input folder {root!r} has no files")

    hash_one = functools.partial(listed_item, real_top)
    if len(found) >= PARALLEL_LISTING and "fork" in mp.get_all_start_methods():
        # many files: hash on every core (one process is ~3 min for 1,000,000 small files)
        with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
            items.extend(pool.map(hash_one, found, chunksize=2048))
    else:
        items.extend(map(hash_one, found))
    del found
    items.sort(key=lambda it: it.key)
    return Listing(source=root, items=items)
