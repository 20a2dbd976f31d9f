"""Shared fixtures: users of every role (with TOTP where the role needs it), logged-in
clients, and real node processes."""

from __future__ import annotations

import pytest
from django_otp.oath import TOTP

from pamportal.accounts.models import TOTPDevice
from pamportal.accounts.roles import Role
from tests.support.factories import PASSWORD, UserFactory
from tests.support.node import NodeEnv, using_postgres
from tests.support.totp import fresh_code

# Fixtures every package shares (data_dir, as_role); a package's own conftest may
# override one, e.g. to make data_dir autouse.
pytest_plugins = ["tests.support.fixtures"]


def pytest_collection_modifyitems(config, items):
    if using_postgres():
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def totp_now(device: TOTPDevice, offset_steps: int = 0) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = totp.time + offset_steps * device.step
    return f"{totp.token():0{device.digits}d}"


def totp_fresh(device: TOTPDevice) -> str:
    """A code the device accepts now: its current step, once that is later than the last
    step the device accepted, and not in the last second of a step (waits for that, at
    most one step). For a user who types a code more than once in a test."""
    if device.pk is not None:
        device.refresh_from_db()
    code, _t = fresh_code(device.bin_key, device.last_t, step=device.step, t0=device.t0, digits=device.digits)
    return code


@pytest.fixture
def make_user(db):
    """``make_user(name, role)``: a user of that role, with a confirmed TOTP device when
    the role needs one (``totp=`` forces it either way)."""

    def make(username: str, role: Role, *, totp: bool | None = None, password: str = PASSWORD):
        extra = {} if totp is None else {"totp": totp}
        return UserFactory(username=username, role=role, password=password, **extra)

    return make


@pytest.fixture
def login_client(client):
    """Log a user in as the login page would, second factor included when enrolled."""

    def login(user, c=None):
        c = c or client
        c.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
        if device is not None:
            session = c.session
            session["otp_device_id"] = device.persistent_id
            session.save()
        return c

    return login


@pytest.fixture
def admin_user(make_user):
    return make_user("root-admin", Role.ADMINISTRATOR)


@pytest.fixture
def node_env(tmp_path):
    """A real node's environment; every process it starts is stopped afterwards."""
    env = NodeEnv(tmp_path / "node")
    try:
        yield env
    finally:
        env.stop()
