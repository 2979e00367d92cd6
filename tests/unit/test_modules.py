"""Rules every module and entry point of the project keeps."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "training", "inference", "infra", "bench")
SHIPPED = ("pipelines", "training", "inference")  # in the code bundle the containers run


def _modules(packages: tuple[str, ...]) -> list[Path]:
    found = [p for package in packages for p in (ROOT / package).rglob("*.py")]
    assert len(found) > 50  # the packages were found
    return found


def test_no_module_shares_a_name_with_the_standard_library() -> None:
    """A step entry point run as a script (``python pipelines/prepare/step.py``) puts its own
    folder first on ``sys.path``, so a sibling module named like a stdlib one replaces it for
    every import in that process (a ``select.py`` once broke ``subprocess`` that way)."""
    shadowing = [
        str(p.relative_to(ROOT)) for p in _modules(PACKAGES) if p.stem in sys.stdlib_module_names
    ]
    assert not shadowing, f"rename these, they shadow stdlib modules: {shadowing}"


def _main_blocks(path: Path) -> list[ast.If]:
    tree = ast.parse(path.read_text())
    return [
        node
        for node in tree.body
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
    ]


def test_every_entry_point_exits_through_quick_exit() -> None:
    """inference/quick_exit.py: each process the steps start skips walking its heap at exit."""
    entry_points = {p: blocks for p in _modules(SHIPPED) if (blocks := _main_blocks(p))}
    entry_points[ROOT / "pipelines/cli/__main__.py"] = [
        ast.parse((ROOT / "pipelines/cli/__main__.py").read_text())
    ]
    assert len(entry_points) >= 10
    missing = [
        str(p.relative_to(ROOT))
        for p, blocks in entry_points.items()
        if not any("quick_exit(main())" in ast.unparse(b) for b in blocks)
    ]
    assert not missing, f"end these with sys.exit(quick_exit(main())): {missing}"
    # the console script too (pipelines.cli.main itself stays heap-neutral for in-process use)
    assert 'lepton = "pipelines.cli:console_main"' in (ROOT / "pyproject.toml").read_text()
    assert "quick_exit(main())" in (ROOT / "pipelines/cli/__init__.py").read_text()


def test_quick_exit_still_runs_atexit_handlers_and_flushes_output() -> None:
    code = (
        "import atexit, sys\n"
        "from inference.quick_exit import quick_exit\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "sys.stdout.write('buffered ')\n"
        "sys.exit(quick_exit(3))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (3, "buffered atexit ran\n")


def test_the_lepton_command_imports_no_heavy_library_to_start() -> None:
    """`lepton --help` and argument errors answer at once: the command modules import boto3,
    numpy, torch, MLflow, the SageMaker SDK and Pillow only inside the commands that use them."""
    heavy = ("boto3", "botocore", "numpy", "torch", "mlflow", "sagemaker", "PIL")
    code = f"import sys, pipelines.cli; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert loaded == "[]"
