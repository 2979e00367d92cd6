import os
import stat
from pathlib import Path

import pytest

from pipelines.settings import create_private_once, load_settings, restrict_tree


def test_defaults_are_local_and_loopback(tmp_path: Path) -> None:
    s = load_settings({"LEPTON_STATE_DIR": str(tmp_path / "state")})
    assert s.mode == "local"
    assert s.s3_endpoint_url == "http://127.0.0.1:8333"
    assert s.tracking_uri == "http://127.0.0.1:5001"
    assert s.credentials() is None  # nothing generated until services start
    creds = s.credentials(create=True)
    assert creds is not None and s.credentials() == creds
    assert stat.S_IMODE((tmp_path / "state" / "credentials.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700  # the state folder


def test_aws_endpoint_url_is_honoured() -> None:
    s = load_settings({"LEPTON_MODE": "aws", "AWS_ENDPOINT_URL": "http://127.0.0.1:5000"})
    assert s.s3_endpoint_url == "http://127.0.0.1:5000"
    assert load_settings({"LEPTON_MODE": "aws"}).s3_endpoint_url is None


def test_bad_values_are_reported() -> None:
    with pytest.raises(ValueError, match="LEPTON_S3_PORT"):
        load_settings({"LEPTON_S3_PORT": "eighty"})
    with pytest.raises(ValueError, match="LEPTON_MODE"):
        load_settings({"LEPTON_MODE": "cloud"})


def test_private_files_are_created_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    assert create_private_once(path, b"first")
    assert not create_private_once(path, b"second")  # never replaces what another made
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.toml"]  # no temporary left


def test_restrict_tree_takes_group_and_other_bits_off(tmp_path: Path) -> None:
    folder = tmp_path / "s3"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "data.dat").write_bytes(b"x")
    (folder / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(folder, 0o755)
    os.chmod(folder / "sub", 0o775)
    os.chmod(folder / "sub" / "data.dat", 0o644)
    os.chmod(folder / "tool", 0o755)
    restrict_tree(folder)
    modes = {
        str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
        for p in [folder, *folder.rglob("*")]
    }
    assert modes == {"s3": 0o700, "s3/sub": 0o700, "s3/sub/data.dat": 0o600, "s3/tool": 0o700}
    restrict_tree(tmp_path / "missing")  # nothing to do, no error


def test_seaweedfs_runs_in_its_namespace_unless_told_not_to(tmp_path: Path) -> None:
    from pipelines.services import netns
    from pipelines.services.definitions import seaweedfs

    env = {"LEPTON_STATE_DIR": str(tmp_path)}
    isolated = seaweedfs(load_settings(env))
    direct = seaweedfs(load_settings({**env, "LEPTON_S3_ISOLATION": "0"}))
    assert Path(direct.command[0]).name == "weed" and "LEPTON_S3_ISOLATION=0" in direct.note
    weed_args = direct.command[1:]
    if netns.available():
        launcher = ["-m", "pipelines.services.netns", "--host", "127.0.0.1", "--port", "8333"]
        assert isolated.command[1:7] == launcher and isolated.command[8:] == direct.command
        assert "only S3 is reachable" in isolated.note
    else:
        assert isolated.command[1:] == weed_args and "no user namespaces" in isolated.note
