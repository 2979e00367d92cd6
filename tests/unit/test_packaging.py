"""Installed versions the project depends on (pip silently backtracks otherwise)."""

from importlib.metadata import version


def test_s3fs_is_a_2026_release() -> None:
    # With boto3 outside aiobotocore's range pip falls back to s3fs 0.4.2 without a word.
    assert version("s3fs").startswith("2026."), version("s3fs")


def test_major_versions() -> None:
    assert version("sagemaker").split(".")[0] == "3"
    assert version("mlflow").split(".")[0] == "3"
    assert tuple(int(x) for x in version("mlflow").split(".")[:2]) >= (3, 10)
    assert version("torch").startswith("2.14.1")
    assert version("lightning").split(".")[0] == "2"
