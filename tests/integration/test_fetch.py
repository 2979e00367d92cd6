"""The runner's many-small-object transfers (pipelines/runner/fetch.py) against a real
SeaweedFS: what is PUT is what is GOT, for awkward keys too, and failures are raised, named,
never left as half-written files."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from pathlib import Path

import pytest

from pipelines.runner import fetch
from pipelines.settings import Settings
from pipelines.storage import s3_client


def _endpoint(settings: Settings, via: str = "socket") -> fetch.Endpoint:
    ep = fetch.endpoint_of(s3_client(settings))
    assert ep is not None  # the local store has an explicit endpoint and static keys
    # the local SeaweedFS also serves S3 on its Unix socket, which the fast path then uses
    assert ep.unix_socket == fetch.local_s3_socket(settings.s3_port)
    return ep if via == "socket" else dataclasses.replace(ep, unix_socket=None)


def test_the_socket_is_used_only_when_it_is_ours(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-socket"
    plain.write_bytes(b"")
    assert not fetch._own_socket(str(plain)) and not fetch._own_socket(str(tmp_path / "none"))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.sock"))
        assert not fetch._own_socket(str(tmp_path / "s.sock"))  # bound, nobody listening
        sock.listen()
        assert fetch._own_socket(str(tmp_path / "s.sock"))
    assert not fetch._own_socket(str(tmp_path / "s.sock"))  # left behind, as weed leaves it
    with socket.socket(socket.AF_UNIX) as busy:  # listening, never accepting: backlog fills
        busy.bind(str(tmp_path / "busy.sock"))
        busy.listen(1)
        states = [fetch.socket_state(str(tmp_path / "busy.sock")) for _ in range(5)]
        assert states == ["live"] * 5  # answered at once, where connect used to block forever


def test_an_endpoint_never_shows_its_secret() -> None:
    ep = fetch.Endpoint("http", "127.0.0.1:1", "us-east-1", "AKIDPUBLIC", "s3cr3t-key", "t0ken")
    shown = f"{ep!r} {ep} {[ep]}"
    assert "AKIDPUBLIC" in shown and "s3cr3t-key" not in shown and "t0ken" not in shown
    assert ep.secret_key == "s3cr3t-key"  # still there for signing


@pytest.mark.parametrize("via", ["socket", "tcp"])
def test_put_then_fetch_round_trips_more_objects_than_connections(
    s3_settings: Settings, tmp_path: Path, via: str
) -> None:
    ep, bucket = _endpoint(s3_settings, via), s3_settings.data_bucket
    run = uuid.uuid4().hex[:8]
    names = ["plain.png", "with space.png", "ünï cødé.png", "a+b=c&d.png", "empty.bin"]
    names += [f"many/{i:04d}.png" for i in range(3 * fetch.CONNECTIONS)]
    items = [(f"fetch-test/{run}/{name}", name.encode() * (i % 7)) for i, name in enumerate(names)]
    assert fetch.put_objects(ep, bucket, items) == len(items)
    pages = s3_client(s3_settings).get_paginator("list_objects_v2")
    by_boto3 = [
        {k: o[k] for k in ("Key", "Size", "ETag")}
        for page in pages.paginate(Bucket=bucket, Prefix=f"fetch-test/{run}/")
        for o in page["Contents"]
    ]
    assert sorted(o["Key"] for o in by_boto3) == sorted(key for key, _ in items)
    # the fast listing reads the same, over many pages, awkward keys included
    assert fetch.list_objects(ep, bucket, f"fetch-test/{run}/", page=7) == by_boto3
    assert fetch.list_objects(ep, bucket, f"fetch-test/{run}/nothing-here/") == []

    (tmp_path / "many").mkdir()
    pairs = [(key, tmp_path / key.split("/", 2)[2]) for key, _ in items]
    assert fetch.fetch_objects(ep, bucket, pairs) == len(items)
    for (_key, body), (_, path) in zip(items, pairs, strict=True):
        assert path.read_bytes() == body
    assert not list(tmp_path.rglob("*.part"))


def test_a_missing_object_is_named_and_leaves_no_file(
    s3_settings: Settings, tmp_path: Path
) -> None:
    ep, bucket = _endpoint(s3_settings), s3_settings.data_bucket
    key = f"fetch-test/{uuid.uuid4().hex}/absent.png"
    with pytest.raises(OSError, match=rf"GET s3://{bucket}/{key}: HTTP 404"):
        fetch.fetch_objects(ep, bucket, [(key, tmp_path / "absent.png")])
    assert not list(tmp_path.iterdir())


def test_wrong_keys_are_refused_and_a_dead_endpoint_fails_after_its_attempts(
    s3_settings: Settings, tmp_path: Path
) -> None:
    ep, bucket = _endpoint(s3_settings), s3_settings.data_bucket
    forged = dataclasses.replace(ep, secret_key="not-the-secret")
    with pytest.raises(OSError, match="HTTP 403"):
        fetch.put_objects(forged, bucket, [(f"fetch-test/{uuid.uuid4().hex}", b"x")])
    with pytest.raises(OSError, match="listing .*HTTP 403"):
        fetch.list_objects(forged, bucket, "fetch-test/")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        dead = dataclasses.replace(ep, host=f"127.0.0.1:{port}", unix_socket=None)
    with pytest.raises(OSError, match="s3://.*/k"):
        fetch.fetch_objects(dead, bucket, [("k", tmp_path / "k")])
    with pytest.raises(OSError, match="listing s3://"):
        fetch.list_objects(dead, bucket, "k")
    assert not list(tmp_path.iterdir())


def test_a_download_reports_progress_only_when_it_takes_a_while(
    s3_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input download (transfer.download, as the runner emulates a channel) logs a progress
    line per period while it fetches, and nothing when it is done before the first one."""
    from pipelines.runner import transfer

    ep, bucket = _endpoint(s3_settings), s3_settings.data_bucket
    prefix = f"fetch-test/{uuid.uuid4().hex[:8]}"
    n = 2 * fetch.CONNECTIONS + 3
    assert fetch.put_objects(ep, bucket, [(f"{prefix}/c/{i:03d}.png", b"x" * i) for i in range(n)])
    client, uri = s3_client(s3_settings), f"s3://{bucket}/{prefix}"
    quick: list[str] = []
    assert transfer.download(client, uri, tmp_path / "quick", log=quick.append) == n
    assert quick == []  # done well within PROGRESS_EVERY_S
    monkeypatch.setattr(transfer, "PROGRESS_EVERY_S", 0.0)  # a line after every object
    lines: list[str] = []
    assert transfer.download(client, uri, tmp_path / "slow", log=lines.append) == n
    assert [line.split(",")[0] for line in lines] == [
        f"fetched {i}/{n} ({100 * i // n}%)" for i in range(1, n + 1)
    ]
    assert "objects/s, about" in lines[0] and "left" not in lines[-1]
    assert sorted(p.name for p in (tmp_path / "slow" / "c").iterdir()) == [
        f"{i:03d}.png" for i in range(n)
    ]
