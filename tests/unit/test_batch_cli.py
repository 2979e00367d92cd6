"""`lepton batch predict`'s options are BatchConfig's fields, derived, and reach the job as the
Batch step's arguments; a bad value fails on the command line, before anything starts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from pipelines.batch.config import JOB_FIELDS, BatchConfig, option_flags
from pipelines.cli import batch, build_parser
from training.serialize import from_args


def _parse(*flags: str) -> dict[str, object]:
    return batch._options(build_parser().parse_args(["batch", "predict", "in/", "out/", *flags]))


def test_every_field_but_the_jobs_own_is_an_option_with_its_default() -> None:
    text = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "batch", "predict", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    text = " ".join(text.split())  # argparse wraps long lines
    options = [f for f in dataclasses.fields(BatchConfig) if f.name not in JOB_FIELDS]
    assert {"top_k", "batch_size", "workers", "max_pixels"} <= {f.name for f in options}
    for f in options:
        assert f"--{f.name.replace('_', '-')}" in text and f"(default {f.default})" in text
    assert set(JOB_FIELDS) <= {f.name for f in dataclasses.fields(BatchConfig)}


def test_given_options_reach_the_job_arguments_and_bad_ones_fail_early() -> None:
    given = _parse("--top-k", "2", "--max-pixels", "1000")
    assert given == {"top_k": "2", "max_pixels": "1000"}  # the rest stays the job's default
    cfg = from_args(BatchConfig, ["--input=a", "--output=b", "--model=m", *option_flags(given)])
    assert (cfg.top_k, cfg.max_pixels, cfg.batch_size) == (2, 1000, 64)
    assert _parse() == {}
    with pytest.raises(ValueError, match="top_k"):
        _parse("--top-k", "0")
    with pytest.raises(ValueError):
        _parse("--batch-size", "many")
