"""`lepton train`: the training entry point, standalone or under torchrun."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train on a prepared dataset (python -m training.train; --nproc N runs torchrun)",
        description="Runs training/train.py. Arguments after -- go to it unchanged "
        "(see `python -m training.train --help`).",
    )
    parser.add_argument("--nproc", type=int, default=1, help="processes (torchrun) [1]")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments for training.train")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from pipelines.settings import load_settings

    rest = [a for a in args.train_args if a != "--"]
    settings = load_settings()
    # Same environment a pipeline step gets: S3 endpoint and keys, tracking server.
    env = {
        **os.environ,
        **settings.s3_env(),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MLFLOW_EXPERIMENT_NAME": os.environ.get(
            "MLFLOW_EXPERIMENT_NAME", settings.experiment_name
        ),
    }
    if args.nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            "-m",
            "training.train",
            *rest,
        ]
    else:
        cmd = [sys.executable, "-m", "training.train", *rest]
    return subprocess.call(cmd, env=env)
