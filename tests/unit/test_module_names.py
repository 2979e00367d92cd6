"""Module names that cannot shadow the standard library.

A step entry point run as a script (``python pipelines/prepare/step.py``) puts its own folder
first on ``sys.path``, so a sibling module named like a stdlib one replaces it for every
import in that process (a ``select.py`` once broke ``subprocess`` that way).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "training", "inference", "infra", "bench")


def test_no_module_shares_a_name_with_the_standard_library() -> None:
    modules = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    assert len(modules) > 50  # the packages were found
    shadowing = [str(p.relative_to(ROOT)) for p in modules if p.stem in sys.stdlib_module_names]
    assert not shadowing, f"rename these, they shadow stdlib modules: {shadowing}"
