"""A step's inputs are listed once (pipelines/runner/transfer.py `Listings`), against a real
SeaweedFS: the cache key's fingerprint and every instance's download see the same objects, so
an object that lands after the key was made is neither fingerprinted nor downloaded, and N
instances of a ShardedByS3Key input do not list the prefix N times."""

from __future__ import annotations

import uuid
from pathlib import Path

from pipelines.runner import transfer
from pipelines.settings import Settings
from pipelines.storage import s3_client


def test_the_cache_key_and_every_instance_share_one_listing(
    s3_settings: Settings, tmp_path: Path
) -> None:
    client, bucket = s3_client(s3_settings), s3_settings.data_bucket
    prefix = f"tests/listings-{uuid.uuid4().hex}"
    names = [f"c{i % 3}/{i:03d}.png" for i in range(12)]
    for i, name in enumerate(names):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=bytes([i]) * (10 + i))
    uri = f"s3://{bucket}/{prefix}"
    listings = transfer.Listings(client)
    key = transfer.fingerprint(client, uri, listings)
    client.put_object(Bucket=bucket, Key=f"{prefix}/c0/late.png", Body=b"after the key")

    hosts = [tmp_path / f"algo-{i + 1}" for i in range(2)]
    counts = [
        transfer.download(client, uri, h, (i, 2), listings=listings) for i, h in enumerate(hosts)
    ]
    got = sorted(str(p.relative_to(h)) for h in hosts for p in h.rglob("*") if p.is_file())
    assert counts == [6, 6] and got == sorted(names)  # disjoint shares of what was keyed
    assert listings.made == 1
    assert transfer.fingerprint(client, uri, listings) == key
    # without the shared listing, the late object is seen: key and download would differ
    assert transfer.fingerprint(client, uri) != key
    assert transfer.download(client, uri, tmp_path / "fresh") == len(names) + 1
    listings.release()  # what the runner does once a step's inputs are in place
    assert transfer.fingerprint(client, uri, listings) != key and listings.made == 2
