"""``model.tar.gz``, byte for byte reproducible: the one writer of SageMaker's model archive.

Torch-free on purpose: the local runner packs every training job's model folder with it, and
importing torch there (through training/export.py) cost the Train step 3 s.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

from training.atomic import atomic_write_bytes


def pack_model_tar(
    model_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    names: Sequence[str] | None = None,
) -> str:
    """Write ``model.tar.gz`` of ``model_dir`` reproducibly; returns its sha256.

    Members are the folder's regular files, subfolders included (or ``names``), in sorted order
    with zeroed mtime/owner and mode 0644, and the gzip header has no timestamp or file name,
    so the same files always give the same bytes.
    """
    src = Path(model_dir)
    members = (
        sorted(names)
        if names is not None
        else sorted(
            p.relative_to(src).as_posix()
            for p in src.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
        )
    )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in members:
            data = (src / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0) as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    atomic_write_bytes(out_path, data)
    return hashlib.sha256(data).hexdigest()
