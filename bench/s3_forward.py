"""SeaweedFS in its own network namespace vs. directly on the host (not a test).

`lepton services up` runs SeaweedFS in a private network namespace, with only S3 forwarded to
the host by pipelines/services/netns.py, so every S3 byte passes through that forwarder. This
starts two S3-only stacks in temporary state folders, one forwarded and one direct
(LEPTON_S3_ISOLATION=0), loads the same objects into both, and measures, alternating rounds
on the two: small-object download with the runner's fetch over TCP (objects/s; the runner
itself uses weed's Unix socket, reported too) and large-object download with boto3 (MB/s).
Ratios are forwarded / direct. Progress on stderr, JSON last.

    .venv/bin/python bench/s3_forward.py [--objects 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.runner import fetch  # noqa: E402
from pipelines.services import control, netns  # noqa: E402
from pipelines.settings import Settings, load_settings  # noqa: E402
from pipelines.storage import s3_client  # noqa: E402
from tests.fixtures_services import free_port_block  # noqa: E402

LARGE_BYTES = 64 * 1024 * 1024


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def stack(state: Path, isolated: bool) -> Settings:
    env = {
        "LEPTON_STATE_DIR": str(state),
        "LEPTON_S3_PORT": str(free_port_block(10)),
        "LEPTON_S3_ISOLATION": "1" if isolated else "0",
    }
    settings = load_settings(env)
    control.up(
        settings, out=lambda m: log(f"{'forwarded' if isolated else 'direct'}: {m}"), only=("s3",)
    )
    return settings


def load(settings: Settings, n: int) -> None:
    ep = fetch.endpoint_of(s3_client(settings))
    assert ep is not None
    items = [(f"small/{i:07d}.bin", os.urandom(2048 + i % 4096)) for i in range(n)]
    fetch.put_objects(ep, settings.data_bucket, items)
    s3_client(settings).put_object(
        Bucket=settings.data_bucket, Key="large.bin", Body=os.urandom(LARGE_BYTES)
    )


def small_rate(settings: Settings, n: int, work: Path, unix_socket: bool = False) -> float:
    ep = fetch.endpoint_of(s3_client(settings))
    assert ep is not None
    if not unix_socket:
        ep = dataclasses.replace(ep, unix_socket=None)
    pairs = [(f"small/{i:07d}.bin", work / f"{i:07d}.bin") for i in range(n)]
    t0 = time.perf_counter()
    got = fetch.fetch_objects(ep, settings.data_bucket, pairs)
    seconds = time.perf_counter() - t0
    assert got == n, got
    shutil.rmtree(work)
    work.mkdir()
    return n / seconds


def large_rate(settings: Settings) -> float:
    client = s3_client(settings)
    t0 = time.perf_counter()
    body = client.get_object(Bucket=settings.data_bucket, Key="large.bin")["Body"].read()
    seconds = time.perf_counter() - t0
    assert len(body) == LARGE_BYTES
    return LARGE_BYTES / seconds / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not netns.available():
        raise SystemExit("this machine refuses unprivileged network namespaces: nothing to compare")
    tmp = Path(tempfile.mkdtemp(prefix="lepton-s3-forward-"))
    stacks = {name: stack(tmp / name, name == "forwarded") for name in ("direct", "forwarded")}
    try:
        for name, settings in stacks.items():
            load(settings, args.objects)
            log(f"{name}: loaded {args.objects} small objects and one of {LARGE_BYTES >> 20} MB")
        small: dict[str, list[float]] = {name: [] for name in (*stacks, "forwarded_unix_socket")}
        large: dict[str, list[float]] = {name: [] for name in stacks}
        work = tmp / "work"
        work.mkdir()
        for r in range(args.rounds):
            for name, settings in stacks.items():
                small[name].append(small_rate(settings, args.objects, work))
                if name == "forwarded":
                    rate = small_rate(settings, args.objects, work, unix_socket=True)
                    small["forwarded_unix_socket"].append(rate)
                large[name].append(large_rate(settings))
                log(
                    f"round {r + 1} {name}: {small[name][-1]:.0f} objects/s, {large[name][-1]:.0f} MB/s"
                )
    finally:
        for settings in stacks.values():
            control.down(settings, out=lambda _m: None)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {
        k: {n: statistics.median(v) for n, v in d.items()}
        for k, d in (("small", small), ("large", large))
    }
    result: dict[str, Any] = {
        "objects": args.objects,
        "rounds": args.rounds,
        "small_objects_per_s": {n: round(v, 1) for n, v in med["small"].items()},
        "large_mb_per_s": {n: round(v, 1) for n, v in med["large"].items()},
        "ratio_small_forwarded_to_direct": round(
            med["small"]["forwarded"] / med["small"]["direct"], 3
        ),
        "ratio_small_unix_socket_to_direct": round(
            med["small"]["forwarded_unix_socket"] / med["small"]["direct"], 3
        ),
        "ratio_large_forwarded_to_direct": round(
            med["large"]["forwarded"] / med["large"]["direct"], 3
        ),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
