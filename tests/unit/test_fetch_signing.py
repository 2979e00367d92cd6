"""The runner's own SigV4 signer (pipelines/runner/fetch.py `_Signer`) signs exactly as botocore
does: the same Authorization header for the same request, second and credentials, across a
change of day (the cached signing key is derived again) and with a session token."""

from __future__ import annotations

import calendar
import datetime as dt

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from pipelines.runner import fetch


def _botocore_authorization(
    ep: fetch.Endpoint, path: str, query: str, when: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    url = f"{ep.scheme}://{ep.host}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method="GET", url=url)
    # an unsigned payload, as fetch.py sends
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    credentials = Credentials(ep.access_key, ep.secret_key, ep.token)
    botocore.auth.S3SigV4Auth(credentials, "s3", ep.region).add_auth(request)
    return str(request.headers["Authorization"])


def _ours(signer: fetch._Signer, path: str, query: str, when: dt.datetime, monkeypatch) -> str:
    monkeypatch.setattr(fetch.time, "time", lambda: calendar.timegm(when.utctimetuple()) + 0.4)
    lines = signer.headers("GET", path, query)
    return next(line.split(": ", 1)[1] for line in lines if line.startswith("Authorization: "))


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEXAMPLEtoken"])
def test_signatures_match_botocore_across_a_change_of_day(
    token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = fetch.Endpoint(
        "http", "127.0.0.1:8333", "eu-west-1", "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token
    )
    signer = fetch._Signer(ep)
    requests = [
        ("/lepton-data/raw/c0/0000001.png", ""),
        ("/lepton-data/raw/c%20space/%C3%A9t%C3%A9.png", ""),
        ("/lepton-data", "encoding-type=url&list-type=2&max-keys=1000&prefix=raw%2F"),
    ]
    seen = set()
    for when in (
        dt.datetime(2026, 12, 8, 23, 59, 58, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 8, 23, 59, 59, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 9, 0, 0, 1, tzinfo=dt.UTC),  # a new day: a new signing key
    ):
        for path, query in requests:
            ours = _ours(signer, path, query, when, monkeypatch)
            assert ours == _botocore_authorization(ep, path, query, when, monkeypatch)
            seen.add(ours)
    assert len(seen) == 3 * len(requests)  # every second and request signs differently
