"""Entry point of the monitoring job (a SageMaker Processing job; Model Monitor's
bring-your-own-container contract when run without arguments).

    python3 -m pipelines.monitor.step --capture DIR --baseline FILE --output DIR \
        [--start ISO --end ISO] [MonitorConfig fields as --name value]

Without `--capture`, the environment Model Monitor sets is used: `dataset_source` (the
captured files of the window, in the capture layout), `output_path` (where
`constraint_violations.json` goes), `baseline_statistics` (our baseline.json), `start_time` and
`end_time`. Exit status: 0 checked (the status is in monitoring_summary.json; violations are in
constraint_violations.json, which Model Monitor turns into CompletedWithViolations), 2 invalid
input (no baseline), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipelines.monitor.core import MonitorConfig, check, summary_lines
from pipelines.monitor.source import read_folder
from training.serialize import add_config_options, config_from_namespace


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="monitor", description="Check captured traffic for drift.")
    p.add_argument("--capture", type=Path, default=env.get("dataset_source"))
    p.add_argument("--baseline", type=Path, default=env.get("baseline_statistics"))
    p.add_argument("--output", type=Path, default=env.get("output_path"))
    p.add_argument("--start", default=env.get("start_time"), help="ISO time, inclusive")
    p.add_argument("--end", default=env.get("end_time"), help="ISO time, exclusive")
    add_config_options(p, MonitorConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [n for n in ("capture", "baseline", "output") if getattr(args, n) is None]
    if missing:
        print(
            f"monitor: error: no {', '.join(missing)} (arguments or Model Monitor's environment)",
            file=sys.stderr,
        )
        return 2
    try:
        baseline = json.loads(args.baseline.read_text())
        cfg = config_from_namespace(MonitorConfig, args)
    except (OSError, ValueError) as exc:
        print(f"monitor: error: {exc}", file=sys.stderr)
        return 2
    start, end = parse_time(args.start), parse_time(args.end)
    window = {"start": args.start or "", "end": args.end or ""}
    result = check(baseline, read_folder(args.capture, start, end), cfg, args.output, window)
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    from inference.quick_exit import quick_exit

    sys.exit(quick_exit(main()))
