"""TOTP secrets at rest: sealed under the node's key file and bound to their user, moved
out of django-otp's plaintext table by a migration, and refused (logged, never a 500)
when they will not open."""

from __future__ import annotations

import base64
import importlib
import logging
import stat
import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client
from django.urls import reverse

from pamportal.accounts import totp_seal
from pamportal.accounts.models import TOTPDevice
from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from tests.accounts.helpers import events
from tests.conftest import PASSWORD, totp_fresh
from tests.support.node import using_postgres

sealing = importlib.import_module("pamportal.accounts.migrations.0004_totp_seeds_sealed")

LOGIN = "/account/login/"
KEY_HEX = "3132333435363738393031323334353637383930"  # RFC 6238's test secret, "1234567890" * 2


@pytest.fixture(autouse=True)
def own_data_dir(settings, tmp_path):
    settings.PAM_DATA_DIR = tmp_path
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    return tmp_path


def login(client, username, code):
    return client.post(LOGIN, {"username": username, "password": PASSWORD, "otp_token": code})


def secret_forms(key_hex: str) -> list[bytes]:
    """Every way the secret could be written down: hex (either case), raw, base32."""
    raw = bytes.fromhex(key_hex)
    return [key_hex.lower().encode(), key_hex.upper().encode(), raw, base64.b32encode(raw).rstrip(b"=")]


def _new_user(username: str, role: Role = Role.APPROVER):
    return get_user_model().objects.create_user(username=username, password=PASSWORD, role=role)


@pytest.mark.django_db
def test_the_database_row_holds_no_form_of_the_secret(own_data_dir):
    user = _new_user("anna")
    device = TOTPDevice.objects.create(user=user, name="phone", key=KEY_HEX, confirmed=True)
    key_file = own_data_dir / "totp-seal.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32

    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_totpdevice WHERE id = %s", [device.pk])
        row = cursor.fetchone()
    dumped = b"|".join(bytes(v) if isinstance(v, (bytes, memoryview)) else str(v).encode() for v in row)
    for form in [*secret_forms(KEY_HEX), key_file.read_bytes()]:
        assert form not in dumped
    # The model still gives the secret to the code that needs it.
    fresh = TOTPDevice.objects.get(pk=device.pk)
    assert fresh.key == KEY_HEX and fresh.bin_key == bytes.fromhex(KEY_HEX)
    assert "secret=" + base64.b32encode(bytes.fromhex(KEY_HEX)).decode() in fresh.config_url
    assert fresh.persistent_id == f"accounts.totpdevice/{device.pk}"
    # A device made without a key gets 20 random bytes, different each time.
    a = TOTPDevice.objects.create(user=user, name="a")
    b = TOTPDevice.objects.create(user=user, name="b")
    assert len(a.bin_key) == 20 and a.key != b.key
    assert TOTPDevice.objects.get(pk=a.pk).key == a.key


# Committed, so the file holds it; SQLite only: the flush after a transactional test
# deletes rows (no audit event is written here), where PostgreSQL's TRUNCATE is refused by
# the audit table's append-only trigger.
@pytest.mark.skipif(using_postgres(), reason="reads the SQLite database file")
@pytest.mark.django_db(transaction=True)
def test_the_sqlite_file_holds_no_form_of_the_secret(own_data_dir):
    user = _new_user("anna")
    TOTPDevice.objects.create(user=user, name="phone", key=KEY_HEX, confirmed=True)
    name = Path(connection.settings_dict["NAME"])
    files = [p for p in (name, Path(f"{name}-wal"), Path(f"{name}-journal")) if p.exists()]
    on_disk = b"".join(p.read_bytes() for p in files)
    assert b"anna" in on_disk and b"accounts_totpdevice" in on_disk  # the right file, committed
    for form in [*secret_forms(KEY_HEX), (own_data_dir / "totp-seal.key").read_bytes()]:
        assert form not in on_disk


def test_the_data_migration_runs_after_both_tables_exist():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    migration = loader.get_migration("accounts", "0004_totp_seeds_sealed")
    assert set(migration.dependencies) == {("accounts", "0003_totpdevice"), ("otp_totp", "0003_add_timestamps")}
    (operation,) = migration.operations
    assert operation.code is sealing.seal_plaintext_devices and operation.reverse_code is sealing.unseal_to_plaintext


@pytest.mark.django_db
def test_the_migration_seals_plaintext_devices_and_their_codes_still_work():
    # The migration's function on the schema as it stood before it (both tables exist;
    # DDL cannot run inside the test's transaction on SQLite).
    before = [("accounts", "0004_totp_seeds_sealed"), ("otp_totp", "0003_add_timestamps")]
    old = MigrationLoader(connection).project_state(before).apps
    user = old.get_model("accounts", "User").objects.create(
        username="anna", password=make_password(PASSWORD), role=Role.ADMINISTRATOR.value, is_active=True
    )
    now_t = int(time.time()) // 30
    plain = old.get_model("otp_totp", "TOTPDevice").objects.create(
        user_id=user.pk, name="phone", key=KEY_HEX, confirmed=True, last_t=now_t - 3, drift=0,
        throttling_failure_count=2,
    )
    sealing.seal_plaintext_devices(old, None)

    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM otp_totp_totpdevice")
        assert cursor.fetchone()[0] == 0  # the plaintext rows are gone
    device = TOTPDevice.objects.get(user_id=user.pk)
    assert (device.name, device.confirmed, device.last_t, device.drift, device.throttling_failure_count) == (
        "phone", True, now_t - 3, 0, 2
    )
    assert device.key == KEY_HEX and bytes.fromhex(KEY_HEX) not in bytes(device.sealed_key)
    assert plain.created_at is not None and device.created_at == plain.created_at

    device.throttle_reset()
    client = Client()
    response = login(client, "anna", totp_fresh(device))
    assert response.status_code == 302 and response["Location"] == reverse("nodes:dashboard")
    assert client.session["otp_device_id"] == device.persistent_id

    # And back: the reverse migration restores the plaintext row.
    sealing.unseal_to_plaintext(old, None)
    (restored,) = old.get_model("otp_totp", "TOTPDevice").objects.all()
    assert restored.key == KEY_HEX and restored.user_id == user.pk and not TOTPDevice.objects.exists()


@pytest.mark.django_db
def test_a_row_moved_to_another_user_does_not_open_and_is_refused(admin_user, caplog):
    anna, bob = _new_user("anna"), _new_user("bob")
    device = TOTPDevice.objects.create(user=anna, name="phone", key=KEY_HEX, confirmed=True)
    TOTPDevice.objects.create(user=bob, name="phone", confirmed=True)
    # Someone with write access to the database gives bob anna's sealed secret.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE accounts_totpdevice SET sealed_key = %s WHERE user_id = %s", [bytes(device.sealed_key), bob.pk]
        )
    bobs = TOTPDevice.objects.get(user=bob)
    with pytest.raises(totp_seal.TOTPKeyUnreadable):
        bobs.key

    code = totp_fresh(device)  # anna's valid code, typed as bob
    with caplog.at_level(logging.ERROR, logger="pamportal.accounts.models"):
        response = login(Client(), "bob", code)
    assert response.status_code == 200 and b"not correct" in response.content
    assert "moved to another user" in caplog.text and KEY_HEX not in caplog.text
    (rejected,) = events(AuditAction.TOTP_REJECTED)
    assert rejected.target == "user:bob" and rejected.data["reason"] == "secret unreadable on this node"
    # Anna's own device is untouched and works.
    assert login(Client(), "anna", code).status_code == 302


@pytest.mark.django_db
@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda path: path.unlink(), "is missing"),
        (lambda path: path.write_bytes(b"\x07" * 32), "does not open"),
        (lambda path: path.write_bytes(b"short"), "is damaged"),
    ],
    ids=["missing", "replaced", "truncated"],
)
def test_a_missing_or_changed_key_file_makes_codes_fail_with_a_logged_reason(admin_user, own_data_dir, caplog, damage,
                                                                            reason):
    anna, vera = _new_user("anna"), _new_user("vera", Role.VIEWER)
    device = TOTPDevice.objects.create(user=anna, name="phone", confirmed=True)
    stale = TOTPDevice.objects.create(user=vera, name="authenticator", confirmed=False)  # mid-enrolment
    code = totp_fresh(device)
    damage(own_data_dir / "totp-seal.key")

    with caplog.at_level(logging.ERROR, logger="pamportal.accounts.models"):
        response = login(Client(), "anna", code)
    assert response.status_code == 200 and b"not correct" in response.content
    assert reason in caplog.text
    assert events(AuditAction.TOTP_REJECTED)[-1].data["reason"] == "secret unreadable on this node"
    device.refresh_from_db()
    assert device.throttling_failure_count == 0  # not the user's fault: no back-off

    # A user part-way through enrolment gets a new secret (and QR code), not an error
    # page; a damaged key file is never overwritten, so nothing can be sealed until an
    # operator restores or removes it.
    if reason == "is damaged":
        return
    client = Client()
    client.force_login(vera, backend="django.contrib.auth.backends.ModelBackend")
    page = client.get(reverse("accounts:totp_enrol"))
    assert page.status_code == 200
    (fresh,) = TOTPDevice.objects.filter(user=vera)
    assert fresh.pk != stale.pk and fresh.key_readable()


def test_the_test_code_helper_waits_for_a_later_step_clear_of_a_boundary():
    from tests.support.totp import fresh_step

    now = [30 * 100 + 29.5]  # the last half second of step 100
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    assert fresh_step(-1, clock=lambda: now[0], sleep=sleep) == 101  # not 100: too close to its end
    assert fresh_step(101, clock=lambda: now[0], sleep=sleep) == 102  # 101 was used: wait for the next
    assert sum(slept) < 31 and len(slept) == 2


# --- one key for the cluster -------------------------------------------------------------------
@pytest.mark.django_db
def test_a_joining_node_adopts_the_clusters_key_and_goes_back_to_its_own(own_data_dir, tmp_path_factory, settings):
    """The leader's devices open on the follower once it adopted the leader's key; its own
    key is kept, and put back when it leaves the cluster's database."""
    user = _new_user("bea")
    device = TOTPDevice.objects.create(user=user, name="phone", key=KEY_HEX, confirmed=True)  # sealed on "the leader"
    leader_key = totp_seal.key_export()

    settings.PAM_DATA_DIR = tmp_path_factory.mktemp("follower")  # another node, another key
    own_key = totp_seal.key_export()
    assert own_key != leader_key
    with pytest.raises(totp_seal.TOTPKeyUnreadable, match="does not open"):
        TOTPDevice.objects.get(pk=device.pk).bin_key

    assert totp_seal.key_adopt(leader_key) is True
    assert TOTPDevice.objects.get(pk=device.pk).bin_key == bytes.fromhex(KEY_HEX)
    assert totp_seal.own_key_path().read_bytes() == own_key
    assert stat.S_IMODE(totp_seal.key_path().stat().st_mode) == 0o600
    assert stat.S_IMODE(totp_seal.own_key_path().stat().st_mode) == 0o600
    assert totp_seal.key_adopt(leader_key) is False  # a step run again changes nothing
    assert totp_seal.own_key_path().read_bytes() == own_key  # and never keeps the cluster's as its own

    assert totp_seal.key_restore_own() is True
    assert totp_seal.key_path().read_bytes() == own_key and not totp_seal.own_key_path().exists()
    assert totp_seal.key_restore_own() is False
    with pytest.raises(totp_seal.TOTPKeyUnreadable):
        totp_seal.key_adopt(leader_key[:16])

