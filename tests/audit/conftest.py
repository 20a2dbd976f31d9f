"""Audit report tests get a data dir of their own (signing key, MEK, export files)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def audit_data_dir(settings, tmp_path):
    from pamportal.audit import signing

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    settings.PAM_DATA_DIR = data
    signing.clear_cache()
    yield data
    signing.clear_cache()
