"""The Python environment steps run in locally: the container image's, built from
`infra/image/requirements.txt` alone (the project itself is not installed: steps import it from
the code bundle, as in the container).

One virtual environment per requirements digest, under `settings.env_root`
(`~/.cache/lepton/envs/<digest>` by default), built once (`make setup` builds it, so the first
pipeline run does not wait) and reused. A changed file builds a new one; when an earlier one
exists it is cloned with hard links and synchronised (the changed pins installed, packages no
longer listed removed), which takes seconds instead of the minutes a fresh install of torch
takes. A half-built environment never counts: it is built in a temporary folder and renamed
into place last.

Beside the pins, the image holds one compiled piece of the project's own, infra/image/native
(`lepton_pixels`, the endpoint's JSON pixel reader): it is built here too, with pip and the
machine's C compiler, and its sources are part of the digest. Without a compiler the environment
is still made, with a warning; the endpoint then reads JSON the slower, pure way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

Printer = Callable[[str], None]
NATIVE_DIR = Path(__file__).resolve().parents[2] / "infra" / "image" / "native"
NATIVE_DISTRIBUTION = "lepton-native"
READY_FILE = "lepton-env.json"  # written last: the environment is complete
KEEP_ENVIRONMENTS = 2  # the newest ones stay: switching back and forth costs nothing
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


class EnvironmentError_(RuntimeError):
    """The step environment could not be built; the message names the log."""


def requirements_digest(requirements: Path, native: Path | None = None) -> str:
    """Digest of the pins (comments and order do not matter) and of the native sources."""
    pins = sorted(f"{name}=={version}" for name, version in read_pins(requirements).items())
    h = hashlib.sha256("\n".join(pins).encode())
    for path in native_sources(native) if native is not None else []:
        h.update(f"\0{path.name}\0".encode() + path.read_bytes())
    return h.hexdigest()[:16]


def native_sources(native: Path = NATIVE_DIR) -> list[Path]:
    """The native package's sources (its build leaves `build/` and `*.egg-info` beside them):
    what the step environment and the image's build context both take."""
    return sorted(p for p in native.iterdir() if p.is_file() and p.suffix in (".c", ".h", ".toml"))


def read_pins(requirements: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file, by normalised name."""
    pins: dict[str, str] = {}
    for line in requirements.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[_normalise(match[1])] = match[2]
        elif line.strip() and not line.lstrip().startswith("#"):
            raise ValueError(f"{requirements}: not an exact pin: {line.strip()!r}")
    return pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def python_of(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def _ready(env_dir: Path) -> bool:
    return (env_dir / READY_FILE).is_file() and python_of(env_dir).exists()


def ensure_environment(
    requirements: Path, env_root: Path, out: Printer = print, native: Path | None = NATIVE_DIR
) -> Path:
    """The python executable of the environment for `requirements` (and the native package in
    `native`, when given), built if missing."""
    digest = requirements_digest(requirements, native)
    target = env_root / digest
    if _ready(target):
        return python_of(target)
    env_root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=env_root))
    log = env_root / f"{digest}.log"
    try:
        base = _closest_ready(env_root, read_pins(requirements))
        if base is not None:
            out(f"step environment {digest}: cloning {base.name} and syncing it to {requirements}")
            _clone(base, work)
        else:
            out(f"step environment {digest}: installing {requirements} (first time: minutes)")
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(work)], check=True)
        _sync(work, requirements, log)
        built = native is not None and _build_native(work, native, log, out)
        (work / READY_FILE).write_text(
            json.dumps(
                {"digest": digest, "pins": read_pins(requirements), "native": built}, indent=1
            )
        )
        try:
            work.rename(target)
        except OSError:  # a concurrent build finished first: use that one
            if not _ready(target):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out(f"step environment {digest}: ready in {time.monotonic() - started:.0f} s ({target})")
    _prune(env_root, keep={target})
    return python_of(target)


def _prune(env_root: Path, keep: set[Path], newest: int = KEEP_ENVIRONMENTS) -> None:
    """Delete all but the newest environments (clones share files: this frees only theirs)."""
    ready = sorted(
        (p for p in env_root.iterdir() if not p.name.startswith(".") and _ready(p)),
        key=lambda p: (p / READY_FILE).stat().st_mtime,
        reverse=True,
    )
    for old in ready[newest:]:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _closest_ready(env_root: Path, pins: dict[str, str]) -> Path | None:
    """The ready environment sharing the most pins with `pins` (None when there is none)."""
    best, best_score = None, 0
    for candidate in env_root.iterdir() if env_root.is_dir() else []:
        if candidate.name.startswith(".") or not _ready(candidate):
            continue
        try:
            have = dict(json.loads((candidate / READY_FILE).read_text())["pins"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        score = sum(1 for name, version in pins.items() if have.get(name) == version)
        if score > best_score:
            best, best_score = candidate, score
    return best


def _clone(base: Path, work: Path) -> None:
    """Hard-link copy of `base` (same file system); a plain copy where links are refused."""
    shutil.rmtree(work)
    try:
        subprocess.run(["cp", "-al", str(base), str(work)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(base, work, symlinks=True)
    (work / READY_FILE).unlink(missing_ok=True)
    # The venv's own paths (pyvenv.cfg, activate scripts) are not used: steps run bin/python,
    # whose prefix is found from pyvenv.cfg's location.


def _pip(env: Path, args: list[str], log: Path) -> None:
    with open(log, "a") as fh:
        fh.write(f"$ pip {' '.join(args)}\n")
        fh.flush()
        code = subprocess.call(
            [str(python_of(env)), "-m", "pip", "--disable-pip-version-check", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    if code != 0:
        raise EnvironmentError_(f"pip {args[0]} failed for the step environment; see {log}")


def _installed(env: Path) -> dict[str, str]:
    out = subprocess.run(
        [
            str(python_of(env)),
            "-m",
            "pip",
            "list",
            "--format",
            "json",
            "--disable-pip-version-check",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {_normalise(d["name"]): d["version"] for d in json.loads(out)}


def _sync(env: Path, requirements: Path, log: Path) -> None:
    """Make the environment hold exactly the pinned packages (plus pip itself)."""
    pins = read_pins(requirements)
    installed = _installed(env)
    # the native package goes too (a clone's may be of other sources): it is built after this
    extra = sorted(n for n in installed if n not in pins and n not in ("pip", "setuptools"))
    if extra:
        _pip(env, ["uninstall", "--yes", *extra], log)
    missing = [f"{n}=={v}" for n, v in sorted(pins.items()) if installed.get(n) != v]
    if missing:
        # requirements.txt is a full freeze: nothing to resolve, so no dependency resolution
        listing = env / "missing-requirements.txt"
        listing.write_text("\n".join(missing) + "\n")
        _pip(env, ["install", "--no-deps", "--no-input", "-r", str(listing)], log)
        listing.unlink()
    os.utime(env)


def _build_native(env: Path, native: Path, log: Path, out: Printer) -> bool:
    """Build and install the native package into `env`; False (with a warning) if it cannot
    be built, for example where there is no C compiler."""
    with tempfile.TemporaryDirectory(prefix="lepton-native-") as tmp:
        for path in native_sources(native):  # built in a copy: pip builds in the source tree
            shutil.copy2(path, tmp)
        try:
            _pip(env, ["install", "--no-deps", "--no-input", "--force-reinstall", tmp], log)
        except EnvironmentError_:
            built = False
        else:
            built = True
    if not built:
        out(
            f"warning: {NATIVE_DISTRIBUTION} ({native}) could not be built (a C compiler and "
            f"Python headers are needed; see {log}): the endpoint reads JSON pixel bodies "
            "about 3.5x slower, with the same results"
        )
    return built
