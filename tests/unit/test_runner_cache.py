from pathlib import Path

import pytest

from pipelines.definition import names as n
from pipelines.imports import fingerprint, import_closure
from pipelines.runner.cache import StepCache


def test_hits_and_names_what_changed(tmp_path: Path) -> None:
    cache = StepCache(tmp_path, "p")
    key, comps = cache.key("code1", {"dataset": "fp1"}, {"HyperParameters": {"epochs": "3"}})
    entry, note = cache.lookup("Train", key, comps)
    assert entry is None and note == "cache miss: no earlier run of this step"
    cache.store("Train", key, comps, "exec-1", {"p": 1}, {})
    entry, note = cache.lookup("Train", key, comps)
    assert entry is not None and entry["properties"] == {"p": 1} and "exec-1" in note

    k2, c2 = cache.key("code1", {"dataset": "fp1"}, {"HyperParameters": {"epochs": "5"}})
    assert cache.lookup("Train", k2, c2)[1] == (
        "cache miss: argument HyperParameters.epochs changed: '3' -> '5'"
    )
    k3, c3 = cache.key("code1", {"dataset": "fp2"}, {"HyperParameters": {"epochs": "3"}})
    assert cache.lookup("Train", k3, c3)[1] == "cache miss: input changed: dataset"
    k4, c4 = cache.key("code2", {"dataset": "fp1"}, {"HyperParameters": {"epochs": "3"}})
    assert cache.lookup("Train", k4, c4)[1] == "cache miss: its code changed"
    cache.forget("Train", key)
    assert cache.lookup("Train", key, comps)[1] == "cache miss: cached outputs are gone"


ENTRIES = {
    "Prepare": n.PREPARE_MODULE,
    "Train": "training.train",
    "Evaluate": n.EVALUATE_MODULE,
    "Deploy": n.DEPLOY_MODULE,
}


@pytest.fixture
def source_copy(project_source: Path) -> Path:
    return project_source


def _changed_steps(root: Path, rel: str) -> set[str]:
    """The steps whose code fingerprint changes when `rel` is edited."""
    before = {step: fingerprint(entry, root) for step, entry in ENTRIES.items()}
    path = root / rel
    original = path.read_text()
    path.write_text(original + "\n# edited\n")
    try:
        return {step for step, entry in ENTRIES.items() if fingerprint(entry, root) != before[step]}
    finally:
        path.write_text(original)


def test_a_module_only_evaluate_imports_misses_only_evaluate(source_copy: Path) -> None:
    closures = {step: import_closure(entry, source_copy) for step, entry in ENTRIES.items()}
    plots = source_copy / "pipelines" / "evaluate" / "plots.py"
    assert [step for step, files in closures.items() if plots in files] == ["Evaluate"]
    assert _changed_steps(source_copy, "pipelines/evaluate/plots.py") == {"Evaluate"}


def test_fingerprints_follow_real_imports(source_copy: Path) -> None:
    # Evaluate draws with training's figure code and Deploy reads the registry through its
    # MLflow client (function-level imports): all three miss.
    assert _changed_steps(source_copy, "training/tracking.py") == {"Train", "Evaluate", "Deploy"}
    # Prepare reads S3 through pipelines/storage.py, which a hand-kept list once missed.
    assert "Prepare" in _changed_steps(source_copy, "pipelines/storage.py")
    assert (
        _changed_steps(source_copy, "inference/server.py") == set()
    )  # run by Deploy, not imported
