"""The per-epoch progress line (training/progress.py): metrics, throughput and about how long
the run has left, from the epochs this process ran, read from a clock the test steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from training import progress
from training.progress import EpochReporter


def test_each_epoch_line_says_about_how_long_the_run_has_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    trainer = SimpleNamespace(
        is_global_zero=True, max_epochs=4, current_epoch=0, callback_metrics={}, optimizers=[]
    )
    reporter = EpochReporter(world_size=2)
    batch = (None, [0] * 16)
    for epoch, seconds in enumerate([50.0, 70.0, 66.0, 60.0]):
        trainer.current_epoch = epoch
        reporter.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
        for i in range(10):
            reporter.on_train_batch_end(trainer, None, None, batch, i)  # type: ignore[arg-type]
        clock.now += seconds - 10.0
        reporter.on_validation_epoch_start(trainer, None)  # type: ignore[arg-type]
        clock.now += 10.0  # validation: in the epoch's wall time, not in its throughput
        reporter.on_validation_epoch_end(trainer, None)  # type: ignore[arg-type]
        reporter.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    # epochs left x the mean wall time of the epochs so far: 3 x 50, 2 x 60, 1 x 62, none
    assert [line.split(" | ")[-1] for line in lines] == [
        "about 2m30s left",
        "about 2m00s left",
        "about 1m02s left",
        "50.0s",  # the last epoch: its train time (validation excluded), nothing left
    ]
    assert lines[0].startswith("epoch 1/4 | ") and " | 8 img/s | 40.0s | " in lines[0]
