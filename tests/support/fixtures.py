"""Fixtures shared by every test package (loaded through ``pytest_plugins`` in
tests/conftest.py): a data dir of the test's own, and a client logged in as a role."""

from __future__ import annotations

import pytest

from pamportal.accounts.roles import Role


@pytest.fixture(autouse=True)
def _memos_forgotten():
    """Per-process memos (``core.memo``) hold what one test's database said; a rolled
    back transaction sends no signal, so every test starts without them."""
    from pamportal.core.memo import forget_all

    forget_all()
    yield
    forget_all()


@pytest.fixture
def data_dir(settings, tmp_path):
    """The test's own data dir (setup token, MEK file, TLS files), so nothing is shared
    between tests or with the developer's node. A package that needs it for every test
    makes it autouse by overriding it: ``def data_dir(data_dir): return data_dir``."""
    settings.PAM_DATA_DIR = tmp_path
    settings.PAM_TLS_CERT = tmp_path / "tls" / "node.crt"
    settings.PAM_TLS_KEY = tmp_path / "tls" / "node.key"
    return tmp_path


@pytest.fixture
def as_role(admin_user, make_user, login_client, client):
    """``as_role(Role.VIEWER)`` is the test client logged in as a user of that role (the
    fixture's ``admin_user`` for administrators)."""

    def login(role: Role):
        user = admin_user if role == Role.ADMINISTRATOR else make_user(f"u-{role}", role)
        return login_client(user, client)

    return login
