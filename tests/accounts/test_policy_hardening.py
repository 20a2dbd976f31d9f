"""Hardening of the login policy: a lockout is per username and address, tries during a
lockout do not make it longer, one address guessing across many usernames is locked;
and every role that can change anything must enrol TOTP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from pamportal.accounts.roles import Role
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN = "/account/login/"
ADDRESS_A = "192.0.2.10"
ADDRESS_B = "198.51.100.20"


def login(username, *, password=PASSWORD, address=ADDRESS_A):
    return Client().post(LOGIN, {"username": username, "password": password, "otp_token": ""}, REMOTE_ADDR=address)


def lock(username, address=ADDRESS_A):
    limit = django_settings.AXES_FAILURE_LIMIT
    for attempt in range(1, limit):
        assert login(username, password=f"wrong {attempt}", address=address).status_code == 200
    assert login(username, password="wrong again", address=address).status_code == 403


def move_back(delta: timedelta) -> None:
    """Time passes: every failure record gets older by ``delta``."""
    for attempt in AccessAttempt.objects.all():
        AccessAttempt.objects.filter(pk=attempt.pk).update(attempt_time=attempt.attempt_time - delta)


# --- lockout ----------------------------------------------------------------------------
def test_lockout_is_per_username_and_address(admin_user, make_user):
    make_user("vera", Role.VIEWER)
    lock("vera", ADDRESS_A)
    assert login("vera", address=ADDRESS_A).status_code == 403  # still locked there
    # Someone guessing from A cannot lock vera out of the console from elsewhere.
    response = login("vera", address=ADDRESS_B)
    assert response.status_code == 302 and response["Location"] == reverse("nodes:dashboard")


def test_tries_during_a_lockout_do_not_extend_the_cool_off(admin_user, make_user):
    make_user("vera", Role.VIEWER)
    lock("vera")
    cool_off = django_settings.AXES_COOLOFF_TIME
    locked_at = {row.pk: row.attempt_time for row in AccessAttempt.objects.all()}
    move_back(cool_off - timedelta(minutes=2))
    # Near the end of the lockout: more wrong (and right) passwords are refused ...
    assert login("vera", password="still wrong").status_code == 403
    assert login("vera").status_code == 403
    # ... and not counted: the records keep the time of the failure that locked.
    for row in AccessAttempt.objects.all():
        assert row.attempt_time == locked_at[row.pk] - (cool_off - timedelta(minutes=2))
    # The cool-off ends as counted from that failure.
    move_back(timedelta(minutes=3))
    assert login("vera").status_code == 302


def test_one_address_guessing_across_usernames_is_locked(admin_user, make_user):
    make_user("vera", Role.VIEWER)
    user_limit = django_settings.AXES_FAILURE_LIMIT
    address_limit = django_settings.PAM_LOCKOUT_ADDRESS_FAILURES
    assert address_limit > user_limit
    sprayed = 0
    # One wrong password for each of many usernames: below the address's limit, people
    # behind the same address (a NAT) still log in ...
    for _ in range(user_limit + 1):
        assert login(f"guess{sprayed}", password="Winter2026!").status_code == 200
        sprayed += 1
    assert login("vera").status_code == 302
    # ... and a successful login does not wipe the address's count of guesses.
    while sprayed < address_limit - 1:
        assert login(f"guess{sprayed}", password="Winter2026!").status_code == 200
        sprayed += 1
    assert login(f"guess{sprayed}", password="Winter2026!").status_code == 403
    # Now the address is locked for every username, the right password included ...
    assert login("vera").status_code == 403
    assert login("someone-new", password="x").status_code == 403
    # ... but not other addresses.
    assert login("vera", address=ADDRESS_B).status_code == 302


def test_user_list_shows_a_user_locked_from_one_address(admin_user, make_user, login_client):
    make_user("vera", Role.VIEWER)
    lock("vera")
    admin = login_client(admin_user, Client())
    page = admin.get(reverse("accounts:user_list")).content.decode()
    assert reverse("accounts:user_unlock", args=[admin_user.__class__.objects.get(username="vera").pk]) in page


# --- TOTP for every role that can change anything -------------------------------------
@pytest.mark.parametrize("role,required", [
    (Role.VIEWER, False), (Role.OPERATOR, True), (Role.APPROVER, True), (Role.AUDITOR, True),
    (Role.ADMINISTRATOR, True),
])
def test_totp_is_required_for_every_role_but_viewer(make_user, role, required):
    assert make_user(f"u-{role}", role, totp=False).totp_required is required


def test_operator_without_totp_is_sent_to_enrolment_before_any_page(admin_user, make_user):
    make_user("olga", Role.OPERATOR, totp=False)
    client = Client()
    assert client.post(LOGIN, {"username": "olga", "password": PASSWORD}).status_code == 302
    for url in ("/", reverse("cluster:bundles"), reverse("cluster:bundle_generate"), reverse("jobs:list"),
                reverse("preflight:list"), reverse("setup:node")):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"] == reverse("accounts:totp_enrol"), url
    response = client.post(reverse("cluster:bundle_generate"), {"follower_address": "node2.example.com"})
    assert response.status_code == 302 and response["Location"] == reverse("accounts:totp_enrol")
    assert client.get(reverse("accounts:totp_enrol")).status_code == 200
