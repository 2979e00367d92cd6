"""Who may reach the endpoint, and what secrets it keeps: bind policy, bearer token, env scrub.

- Loopback by default (SageMaker hosting aside: ``--sagemaker-hosting``, IAM authorises the
  calls and the platform strips ``Authorization``). Binding any other address needs ``allow_remote`` *and* a token
  (``LEPTON_ENDPOINT_TOKEN``); requests then need ``Authorization: Bearer <token>``, compared in
  constant time, on every path but ``/ping`` (SageMaker's health check sends no credentials).
- The server needs no AWS credentials: :func:`scrub_environment` drops ``AWS_*`` (and the
  token, once read) from the environment it was started with.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import MutableMapping

__all__ = [
    "TOKEN_ENV",
    "BindRefused",
    "check_bind",
    "client_headers",
    "is_loopback",
    "scrub_environment",
    "secret_names",
    "token_matches",
]

TOKEN_ENV = "LEPTON_ENDPOINT_TOKEN"
MIN_TOKEN_CHARS = 16


class BindRefused(ValueError):
    """The address may not be bound with these settings; the message says what to change."""


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_bind(
    host: str, allow_remote: bool, token: str | None, sagemaker_hosting: bool = False
) -> None:
    """Refuse a non-loopback bind without ``allow_remote`` and a token of >= 16 characters.

    ``sagemaker_hosting`` (the image's ``serve``): the container runs behind SageMaker, which
    authorises every InvokeEndpoint call with IAM, is the only client that reaches the port, and
    strips ``Authorization`` headers, so a token could never be sent: none is required."""
    if is_loopback(host) or sagemaker_hosting:
        return
    if not allow_remote:
        raise BindRefused(
            f"refusing to listen on {host!r}, which is not a loopback address: pass "
            f"--allow-remote and set {TOKEN_ENV} (clients then send 'Authorization: Bearer ...')"
        )
    if token is None or len(token) < MIN_TOKEN_CHARS:
        raise BindRefused(
            f"--allow-remote needs a bearer token of at least {MIN_TOKEN_CHARS} characters in "
            f"{TOKEN_ENV}"
        )


def client_headers(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """What a client of our endpoint adds: the bearer token when LEPTON_ENDPOINT_TOKEN is set."""
    import os

    token = (os.environ if environ is None else environ).get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    if not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))


def secret_names(environ: MutableMapping[str, str]) -> list[str]:
    """The variables the server must not keep: AWS credentials and settings, and the token."""
    return sorted(k for k in environ if k.startswith("AWS_") or k == TOKEN_ENV)


def scrub_environment(environ: MutableMapping[str, str]) -> list[str]:
    """Remove :func:`secret_names` from ``environ`` (``os.environ``); returns their names.

    This cleans the process's own view and its children's. ``/proc/<pid>/environ`` keeps
    the environment the process was started with, which is why ``python -m inference.server``
    re-executes itself with a clean one (:func:`inference.server.main`)."""
    names = secret_names(environ)
    for name in names:
        del environ[name]
    return names
