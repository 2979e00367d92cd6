from pathlib import Path

import pytest

from pipelines.settings import load_settings


def test_defaults_are_local_and_loopback(tmp_path: Path) -> None:
    s = load_settings({"LEPTON_STATE_DIR": str(tmp_path)})
    assert s.mode == "local"
    assert s.s3_endpoint_url == "http://127.0.0.1:8333"
    assert s.tracking_uri == "http://127.0.0.1:5001"
    assert s.credentials() is None  # nothing generated until services start
    creds = s.credentials(create=True)
    assert creds is not None and s.credentials() == creds
    assert (tmp_path / "credentials.json").stat().st_mode & 0o077 == 0


def test_aws_endpoint_url_is_honoured() -> None:
    s = load_settings({"LEPTON_MODE": "aws", "AWS_ENDPOINT_URL": "http://127.0.0.1:5000"})
    assert s.s3_endpoint_url == "http://127.0.0.1:5000"
    assert load_settings({"LEPTON_MODE": "aws"}).s3_endpoint_url is None


def test_bad_values_are_reported() -> None:
    with pytest.raises(ValueError, match="LEPTON_S3_PORT"):
        load_settings({"LEPTON_S3_PORT": "eighty"})
    with pytest.raises(ValueError, match="LEPTON_MODE"):
        load_settings({"LEPTON_MODE": "cloud"})
