"""The container image's Python environment: `infra/image/requirements.txt`, derived, not kept.

What the image must hold is read from the code: the third-party imports of the import closures
(pipelines/imports.py) of every entry module a container runs, mapped to the distributions that
provide them, plus the plugins that are loaded by entry point rather than imported by name. Their
dependency closure (Linux x86_64, CPython 3.11, extras followed) is pinned with the very lines of
`constraints.txt`, so the image runs the versions the tests ran. `lepton image requirements`
checks the file (`--write` regenerates it); a unit test fails when it is stale.

Each line may carry a flavour note the Dockerfile acts on (pip ignores comments):
`# cpu-index` (installed from PyTorch's CPU index in the cpu flavour: same release, no CUDA) and
`# gpu-only` (left out of the cpu flavour: the CUDA/NCCL wheels torch's Linux build pulls in).
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.definition import names
from pipelines.imports import PROJECT_PACKAGES, SOURCE_ROOT, import_closure

IMAGE_DIR = SOURCE_ROOT / "infra" / "image"
REQUIREMENTS_PATH = IMAGE_DIR / "requirements.txt"
CONSTRAINTS_PATH = SOURCE_ROOT / "constraints.txt"

# What a container runs: the processing steps (`python3 -m ...`) and the drift monitor, named in
# pipelines/definition/names.py, training (torchrun) and serving (the image's `serve` command).
ENTRY_MODULES = (
    *names.PROCESSING_MODULES,
    names.MONITOR_MODULE,
    "training.train",
    "inference.server",
)
# Loaded through entry points, never imported by name, so no import scan can find them.
PLUGINS = {
    "sagemaker-mlflow": "MLflow's auth and tracking-store plugin for a SageMaker managed MLflow "
    "server (MLFLOW_TRACKING_URI = its ARN, stack output MlflowTrackingServerArn)",
}
# A module that several distributions provide -> the one the project declares (pyproject.toml).
PREFERRED_PROVIDER = {"mlflow": "mlflow"}
CPU_INDEX = ("torch", "torchvision")  # have CPU builds of the same release on PyTorch's index
GPU_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")  # canonical names torch's Linux CUDA build adds
CPU_INDEX_NOTE, GPU_ONLY_NOTE = "# cpu-index", "# gpu-only"
# The image's platform (python:3.11-slim on x86_64), for evaluating dependency markers.
IMAGE_MARKERS = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
}
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


class LockError(RuntimeError):
    """The image's requirements cannot be derived (a dependency is not pinned or installed)."""


@dataclass(frozen=True)
class ImportUse:
    module: str  # top-level module name, e.g. "PIL"
    path: Path  # the project file that imports it
    line: int
    optional: bool  # inside `try: ... except ImportError` (the code copes without it)


# ------------------------------------------------------------------ what the code imports
def _guarded_lines(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside a `try` whose handlers catch ImportError."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught: set[str] = set()
        for handler in node.handlers:
            kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            caught.update(k.id for k in kinds if isinstance(k, ast.Name))
        if caught & _IMPORT_ERRORS:
            for stmt in node.body:
                lines.update(n.lineno for n in ast.walk(stmt) if hasattr(n, "lineno"))
    return lines


def third_party_imports(
    entries: Iterable[str] = ENTRY_MODULES, root: Path = SOURCE_ROOT
) -> list[ImportUse]:
    """Every import of a module outside the project and the standard library, in every file of
    the entries' import closures; function-level (lazy) imports included, since they run too."""
    files = sorted({path for entry in entries for path in import_closure(entry, root)})
    uses: list[ImportUse] = []
    for path in files:
        tree = ast.parse(path.read_bytes(), filename=str(path))
        guarded = _guarded_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PROJECT_PACKAGES or top in sys.stdlib_module_names or top == "__future__":
                    continue
                uses.append(ImportUse(top, path, node.lineno, node.lineno in guarded))
    return uses


@functools.cache
def _providers() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()  # scans every installed distribution: once


def distribution_of(module: str) -> str:
    """The installed distribution (canonical name) that provides a top-level module."""
    found = _providers().get(module)
    if not found:
        raise LockError(f"no installed distribution provides the module {module!r}")
    names = sorted({canonicalize_name(d) for d in found})
    if len(names) > 1:
        preferred = PREFERRED_PROVIDER.get(module)
        if preferred is None:
            raise LockError(f"{module!r} is provided by {names}: add it to PREFERRED_PROVIDER")
        return canonicalize_name(preferred)
    return names[0]


def required_distributions(uses: Iterable[ImportUse]) -> dict[str, str]:
    """Distribution -> why the image needs it (optional imports are not required)."""
    why: dict[str, str] = {}
    for use in uses:
        if not use.optional:
            dist = distribution_of(use.module)
            why.setdefault(dist, f"import {use.module} ({use.path.relative_to(SOURCE_ROOT)})")
    for plugin, reason in PLUGINS.items():
        why.setdefault(canonicalize_name(plugin), reason)
    return why


# ------------------------------------------------------------------ their dependencies
def _image_environment() -> dict[str, str]:
    environment = {key: str(value) for key, value in default_environment().items()}
    environment.update(IMAGE_MARKERS)
    return environment


def requirements_of(name: str, extras: Iterable[str] = ()) -> list[Requirement]:
    """What an installed distribution requires on the image's platform, with `extras` active."""
    environment = _image_environment()
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError as exc:
        raise LockError(f"{name} is needed but not installed (run `make setup`)") from exc
    wanted = []
    for raw in requires:
        req = Requirement(raw)
        if req.marker is None or any(
            req.marker.evaluate({**environment, "extra": extra}) for extra in {"", *extras}
        ):
            wanted.append(req)
    return wanted


def dependency_closure(roots: Iterable[str]) -> set[str]:
    """Canonical names of `roots` and everything they require on the image's platform."""
    extras_seen: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [(canonicalize_name(r), frozenset()) for r in roots]
    while todo:
        name, extras = todo.pop()
        if name in extras_seen and extras <= extras_seen[name]:
            continue
        active = extras_seen.setdefault(name, set())
        active.update(extras)
        for req in requirements_of(name, active):
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return set(extras_seen)


# ------------------------------------------------------------------ the file
def parse_pins(text: str, source: str = "requirements") -> dict[str, str]:
    """Canonical name -> the `name==version` text of each pin (comments and notes dropped)."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, _ = line.partition("==")
            if not sep:
                raise LockError(f"{source}: {line!r} is not an exact pin (name==version)")
            pins[canonicalize_name(name)] = line
    return pins


def read_pins(path: Path) -> dict[str, str]:
    return parse_pins(path.read_text(), path.name)


def note_for(name: str) -> str:
    if name in CPU_INDEX:
        return CPU_INDEX_NOTE
    return GPU_ONLY_NOTE if GPU_ONLY.match(name) else ""


def render_requirements(constraints: Path = CONSTRAINTS_PATH) -> str:
    """The requirements.txt the code needs now: every line a verbatim pin of constraints.txt."""
    needed = dependency_closure(required_distributions(third_party_imports()))
    pins = read_pins(constraints)
    missing = sorted(needed - set(pins))
    if missing:
        raise LockError(f"not pinned in {constraints.name}: {', '.join(missing)}")
    lines = [
        "# The container image's Python environment (infra/image/Dockerfile). Generated by",
        "# `lepton image requirements --write` from the imports of every entry module and the",
        "# pins of constraints.txt; do not edit. `# cpu-index` / `# gpu-only`: see the Dockerfile.",
    ]
    for name in sorted(needed):
        note = note_for(name)
        lines.append(f"{pins[name]}  {note}" if note else pins[name])
    return "\n".join(lines) + "\n"


def stale_requirements(
    path: Path = REQUIREMENTS_PATH, constraints: Path = CONSTRAINTS_PATH
) -> str | None:
    """None if `path` is what `render_requirements` gives now, else a one-line reason."""
    expected = render_requirements(constraints)
    if not path.exists():
        return f"{path} does not exist"
    if path.read_text() == expected:
        return None
    have, want = set(read_pins(path).values()), set(parse_pins(expected).values())
    added, removed = sorted(want - have), sorted(have - want)
    detail = "; ".join(
        part
        for part in (
            f"missing {', '.join(added)}" if added else "",
            f"not needed {', '.join(removed)}" if removed else "",
        )
        if part
    )
    return f"{path.name} is stale ({detail or 'notes or header differ'})"
