"""What code a step runs: the import closure of its entry module, and digests of it.

The closure is read from the source (``ast``), not by importing it: every ``import`` and
``from ... import`` anywhere in a module (function-level imports included, since those run too)
that names a module of the project's own packages is followed, transitively. So the step cache
and the data set's ``code_version`` change exactly when code the step can run changes, and no
list of files has to be kept by hand.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PROJECT_PACKAGES = ("pipelines", "training", "inference")  # what a code bundle holds
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the packages
_DIGEST_CHARS = 12


def module_file(module: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The source file of a project module (package -> its __init__.py), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute module names a module's import statements may load."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module or ""
            names.add(base)
            # `from pkg import mod` may import the submodule pkg.mod
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages' __init__."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(entry: str, root: Path = SOURCE_ROOT) -> tuple[Path, ...]:
    """Every project source file that importing ``entry`` (a module name) can load, sorted."""
    seen: dict[str, Path] = {}
    todo = _with_parents(entry)
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in PROJECT_PACKAGES:
            continue
        path = module_file(name, root)
        if path is None:
            continue  # `from pkg import function` names no module
        seen[name] = path
        tree = ast.parse(path.read_bytes(), filename=str(path))
        for imported in _imported_names(tree, name, path.name == "__init__.py"):
            todo.extend(_with_parents(imported))
    if entry not in seen:
        raise ModuleNotFoundError(f"no project module {entry!r} under {root}")
    return tuple(sorted(seen.values()))


def fingerprint(entry: str, root: Path = SOURCE_ROOT) -> str:
    """sha256 over the paths and bytes of ``entry``'s import closure."""
    digest = hashlib.sha256()
    for path in import_closure(entry, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def code_version(entry: str, root: Path = SOURCE_ROOT) -> str:
    """``lepton+<digest of entry's import closure>``: names the code behind an output, the same
    in a checkout and in a code bundle (no package metadata, no git: containers have neither)."""
    return f"lepton+{fingerprint(entry, root)[:_DIGEST_CHARS]}"
