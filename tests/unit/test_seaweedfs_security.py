"""SeaweedFS's internal keys: generated once, private, one consistent set under concurrency."""

from __future__ import annotations

import stat
import threading
import tomllib
from pathlib import Path

from cryptography import x509

from pipelines.services.seaweedfs_security import (
    JWT_SECTIONS,
    SECURITY_FILE,
    ensure_security,
    grpc_files,
)
from pipelines.settings import load_settings


def test_generated_once_and_private(tmp_path: Path) -> None:
    settings = load_settings({"LEPTON_STATE_DIR": str(tmp_path / "state")})
    folder = ensure_security(settings)
    toml = (folder / SECURITY_FILE).read_text()
    assert ensure_security(settings) == folder and (folder / SECURITY_FILE).read_text() == toml
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {
        p.name: 0o600 for p in (folder / SECURITY_FILE, *grpc_files(settings))
    }
    parsed = tomllib.loads(toml)
    keys = []
    for section in JWT_SECTIONS:
        node = parsed
        for part in section.split("."):
            node = node[part]
        keys.append(node["key"])
    assert len(set(keys)) == 4 and all(len(k) >= 40 for k in keys)


def test_concurrent_generation_leaves_one_consistent_set(tmp_path: Path) -> None:
    settings = load_settings({"LEPTON_STATE_DIR": str(tmp_path / "state")})
    threads = [threading.Thread(target=ensure_security, args=(settings,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ca_path, cert_path, key_path = grpc_files(settings)
    folder = ca_path.parent
    assert set(folder.iterdir()) == {folder / SECURITY_FILE, ca_path, cert_path, key_path}
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises unless the CA in the file signed the cert
