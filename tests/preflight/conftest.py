from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture
def licensed(monkeypatch):
    """licence.valid passes (the licensing app has its own tests)."""
    import pamportal.licensing.selectors as selectors

    monkeypatch.setattr(selectors, "licence_status", lambda: SimpleNamespace(ok=True, message="licensed", days_left=300))


@pytest.fixture
def fake_etcd(tmp_path):
    """A directory holding an ``etcd`` that prints a version, for a PATH with etcd on it."""
    directory = tmp_path / "etcd-bin"
    directory.mkdir()
    binary = directory / "etcd"
    binary.write_text("#!/bin/sh\necho 'etcd Version: 3.4.23'\n")
    binary.chmod(0o755)
    return str(directory)
