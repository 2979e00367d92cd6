from pathlib import Path

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
