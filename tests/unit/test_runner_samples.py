"""The held-out split the last check sends to the endpoint is downloaded whole or not at all."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.definition import names as n
from pipelines.runner.samples import held_out_images
from pipelines.settings import load_settings
from training.shards import load_split, read_manifest


def _execution(folder: Path, dataset_uri: str) -> SimpleNamespace:
    output = {"OutputName": n.DATASET_OUTPUT, "S3Output": {"S3Uri": dataset_uri}}
    prepare = SimpleNamespace(properties={"ProcessingOutputConfig": {"Outputs": [output]}})
    return SimpleNamespace(steps={n.PREPARE: prepare}, folder=folder)


def test_a_download_cut_short_is_done_again(
    tiny_dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.runner import transfer

    settings = load_settings({"LEPTON_STATE_DIR": str(tmp_path / "state")})
    execution = _execution(tmp_path / "exec", str(tiny_dataset_dir))
    download = transfer.download

    def cut_short(_client: object, uri: str, dest: Path, *_a: object, **_k: object) -> int:
        dest.mkdir(parents=True, exist_ok=True)  # the manifest comes first in key order
        (dest / "manifest.json").write_bytes((Path(uri) / "manifest.json").read_bytes())
        raise ConnectionError("the connection went away")

    monkeypatch.setattr(transfer, "download", cut_short)
    with pytest.raises(ConnectionError):
        held_out_images(settings, execution)  # type: ignore[arg-type]
    monkeypatch.setattr(transfer, "download", download)
    classes, images, labels = held_out_images(settings, execution)  # type: ignore[arg-type]
    expected_images, expected_labels = load_split(tiny_dataset_dir, "test")
    assert classes == read_manifest(tiny_dataset_dir)["classes"]
    assert (images == expected_images).all() and (labels == expected_labels).all()
    assert not (tmp_path / "exec" / "held-out.part").exists()


def test_a_failed_download_leaves_nothing_taken_for_done(tmp_path: Path) -> None:
    settings = load_settings({"LEPTON_STATE_DIR": str(tmp_path / "state")})
    execution = _execution(tmp_path / "exec", str(tmp_path / "no-such-dataset"))
    (tmp_path / "exec").mkdir()
    with pytest.raises(FileNotFoundError):
        held_out_images(settings, execution)  # type: ignore[arg-type]
    assert not (tmp_path / "exec" / "held-out").exists()
