"""The image's build context (infra/image/): its files, its digest, its tag, its zip.

The context is exactly the files Docker needs (Dockerfile, requirements.txt, serve, the
sources of native/) and the CodeBuild recipe (buildspec.yml), nothing else from the folder (no
build output of native/). Its digest covers names, modes
and bytes, so the tag `<flavour>-<digest>` names the image a context builds: an unchanged
context is not built again, and an image's tag says which context it came from. The zip is
byte-for-byte reproducible (sorted entries, fixed timestamps and modes), so the same context
uploads to the same `image-build/<digest>.zip`.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.aws.image_lock import IMAGE_DIR
from pipelines.runner.environment import native_sources

CONTEXT_FILES = {
    "Dockerfile": 0o644,
    "requirements.txt": 0o644,
    "serve": 0o755,
    "buildspec.yml": 0o644,
}
NATIVE = "native"  # a folder of the context: the sources `native_sources` names
FLAVOURS = ("gpu", "cpu")  # gpu first: the AWS default training instance is a GPU instance
DEFAULT_FLAVOUR = "gpu"
BUILD_PREFIX = "image-build/"  # in the artifact bucket; the CodeBuild role reads only this
_DIGEST_CHARS = 16
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold


@dataclass(frozen=True)
class BuildContext:
    files: tuple[tuple[str, int, bytes], ...]  # (name, mode, content), sorted by name

    @property
    def digest(self) -> str:
        """sha256 over each file's name, mode and bytes (first 16 hex digits)."""
        h = hashlib.sha256()
        for name, mode, data in self.files:
            h.update(f"{name}\0{mode:o}\0{len(data)}\0".encode())
            h.update(data)
        return h.hexdigest()[:_DIGEST_CHARS]

    def tag(self, flavour: str) -> str:
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
        return f"{flavour}-{self.digest}"

    @property
    def key(self) -> str:
        """Where the zip goes in the artifact bucket."""
        return f"{BUILD_PREFIX}{self.digest}.zip"

    def zip_bytes(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for name, mode, data in self.files:
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.external_attr = (0o100000 | mode) << 16  # a regular file with its mode
                info.create_system = 3  # unix, so the mode is read back
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, data)
        return buffer.getvalue()

    def write_to(self, folder: Path) -> Path:
        """The context as files in `folder` (for a local `docker build`)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, mode, data in self.files:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(mode)
        return folder


def load_context(folder: Path = IMAGE_DIR) -> BuildContext:
    """The build context in `folder`; a missing file is an error naming it."""
    missing = [name for name in CONTEXT_FILES if not (folder / name).is_file()]
    native = native_sources(folder / NATIVE) if (folder / NATIVE).is_dir() else []
    if not native:
        missing.append(f"{NATIVE}/")
    if missing:
        raise FileNotFoundError(f"build context {folder} lacks {', '.join(missing)}")
    files = dict(CONTEXT_FILES) | {f"{NATIVE}/{p.name}": 0o644 for p in native}
    return BuildContext(
        tuple((name, mode, (folder / name).read_bytes()) for name, mode in sorted(files.items()))
    )
