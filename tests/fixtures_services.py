"""Real local services for tests: a SeaweedFS (+ MLflow) stack in a temporary state folder.

Each test session gets its own state folder and its own ports, so tests never touch a user's
`.lepton/` stack and can run beside it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.services import control as services
from pipelines.settings import Settings, load_settings


def free_port_block(width: int = 8) -> int:
    """A base port P with P..P+width-1 free on 127.0.0.1 (and P+10000.. for SeaweedFS gRPC)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 45000)
        ports = [*range(base, base + width), *range(base + 10000, base + 10000 + width)]
        if all(services.port_free("127.0.0.1", p) for p in ports):
            return base
    raise RuntimeError("no free port block found")


def make_settings(state_dir: Path, with_endpoint_port: bool = True) -> Settings:
    base = free_port_block(10)
    env = {
        "LEPTON_STATE_DIR": str(state_dir),
        "LEPTON_S3_PORT": str(base),
        "LEPTON_MLFLOW_PORT": str(base + 8),
        "LEPTON_ENDPOINT_PORT": str(base + 9),
    }
    return load_settings(env)


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A running SeaweedFS + MLflow stack (project buckets created) for the whole session."""
    settings = make_settings(tmp_path_factory.mktemp("lepton-state"))
    services.up(settings, out=lambda _msg: None)
    yield settings
    services.down(settings, out=lambda _msg: None)


@pytest.fixture(scope="session")
def s3_settings(stack_settings: Settings) -> Settings:
    """Settings whose S3 is a real SeaweedFS server with the project's buckets."""
    return stack_settings
