"""The login page: password and TOTP code, lockout after repeated failures, unlock,
logout and the session it starts."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse

from pamportal.accounts.models import TOTPDevice
from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from tests.accounts.helpers import events
from tests.conftest import PASSWORD, totp_fresh, totp_now

pytestmark = pytest.mark.django_db

LOGIN = "/account/login/"


@pytest.fixture(autouse=True)
def no_totp_throttle(settings):
    # django-otp delays the next try after a wrong code (1 s, 2 s, …); these tests
    # check our handling of wrong codes, not its back-off, and must not sleep.
    settings.OTP_TOTP_THROTTLE_FACTOR = 0


def login(client, username, password=PASSWORD, code=""):
    return client.post(LOGIN, {"username": username, "password": password, "otp_token": code})


def wrong_code(device, offset=0):
    return f"{(int(totp_now(device, offset)) + 500_000) % 1_000_000:06d}"


def test_login_with_password_and_code_starts_a_new_verified_session(admin_user, make_user):
    operator = make_user("olga", Role.OPERATOR, totp=True)
    device = TOTPDevice.objects.get(user=operator)
    client = Client()
    client.get(LOGIN)
    anonymous_key = client.session.session_key
    response = login(client, "olga", code=totp_now(device))
    assert response.status_code == 302 and response["Location"] == reverse("nodes:dashboard")
    session = client.session
    assert session.session_key != anonymous_key
    assert session["_auth_user_id"] == str(operator.pk)
    assert session["otp_device_id"] == device.persistent_id
    assert session.get_expiry_age() == django_settings.SESSION_COOKIE_AGE
    (event,) = events(AuditAction.LOGIN_SUCCEEDED)
    assert event.actor_name == "olga" and event.data["second_factor"] == "totp"


def test_login_without_totp_device_needs_no_code(admin_user, make_user):
    make_user("vera", Role.VIEWER)
    response = login(Client(), "vera")
    assert response.status_code == 302
    assert events(AuditAction.LOGIN_SUCCEEDED)[0].data["second_factor"] == "none"


def test_next_is_followed_only_within_the_site(admin_user, make_user):
    make_user("vera", Role.VIEWER)
    client = Client()
    response = client.post(LOGIN + "?next=/jobs/", {"username": "vera", "password": PASSWORD})
    assert response["Location"] == "/jobs/"
    client.post(reverse("accounts:logout"))
    response = client.post(LOGIN + "?next=https://evil.example/", {"username": "vera", "password": PASSWORD})
    assert response["Location"] == reverse("nodes:dashboard")


def test_wrong_password_is_refused_with_message_and_audit(admin_user, make_user):
    make_user("vera", Role.VIEWER)
    response = login(Client(), "vera", password="not the password")
    assert response.status_code == 200
    assert b"The username or password is not correct." in response.content
    assert b"not the password" not in response.content
    (event,) = events(AuditAction.LOGIN_FAILED)
    assert event.outcome == Outcome.DENIED and event.actor_name == "vera" and event.target == "user:vera"
    assert "not the password" not in event.details


def test_bad_totp_codes_are_refused_with_message_and_audit(admin_user, make_user):
    approver = make_user("anna", Role.APPROVER)
    device = TOTPDevice.objects.get(user=approver)
    client = Client()
    cases = [
        (wrong_code(device), b"The 6-digit code is not correct"),
        ("", b"Enter the 6-digit code from your authenticator app."),
        ("12ab56", b"The code is the 6 digits your authenticator app shows."),
        ("1234567", b"The code is the 6 digits your authenticator app shows."),
    ]
    for code, message in cases:
        response = login(client, "anna", code=code)
        assert response.status_code == 200, code
        assert message in response.content, code
        assert "_auth_user_id" not in client.session
    rejected = events(AuditAction.TOTP_REJECTED)
    # The two malformed codes never reach the check; the wrong and the missing one do.
    assert [e.data["reason"] for e in rejected] == ["wrong or reused code", "no code given"]
    assert all(e.outcome == Outcome.DENIED and e.target == "user:anna" for e in rejected)
    assert not events(AuditAction.LOGIN_SUCCEEDED)
    # A reused code (the time step already spent) is refused too.
    code = totp_fresh(device)  # one code, typed twice: the same step, whatever the clock does
    assert login(client, "anna", code=code)["Location"] == reverse("nodes:dashboard")
    other = Client()
    response = login(other, "anna", code=code)
    assert response.status_code == 200 and b"already used" in response.content


def test_wrong_password_never_reveals_whether_the_code_was_right(admin_user, make_user):
    approver = make_user("anna", Role.APPROVER)
    device = TOTPDevice.objects.get(user=approver)
    response = login(Client(), "anna", password="nope", code=totp_now(device))
    assert b"The username or password is not correct." in response.content
    assert not events(AuditAction.TOTP_REJECTED)


def test_lockout_after_the_failure_limit_then_unlock_by_an_administrator(admin_user, make_user, login_client):
    vera = make_user("vera", Role.VIEWER)
    limit = django_settings.AXES_FAILURE_LIMIT
    client = Client()
    for attempt in range(1, limit):
        response = login(client, "vera", password=f"wrong {attempt}")
        assert response.status_code == 200
    response = login(client, "vera", password="wrong again")
    assert response.status_code == 403
    minutes = int(django_settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    text = response.content.decode()
    assert "Too many failed attempts" in text
    assert f"locked for {minutes} minutes or until an administrator unlocks it" in text
    assert len(events(AuditAction.LOGIN_FAILED)) == limit
    (locked,) = events(AuditAction.LOGIN_LOCKED_OUT)
    assert locked.outcome == Outcome.DENIED and locked.data["username"] == "vera" and locked.target == "user:vera"

    # The right password does not help while locked; one more lockout event, no failure.
    response = login(client, "vera")
    assert response.status_code == 403 and "_auth_user_id" not in client.session
    assert len(events(AuditAction.LOGIN_LOCKED_OUT)) == 2
    assert len(events(AuditAction.LOGIN_FAILED)) == limit

    # The administrator sees the lock and lifts it.
    admin = login_client(admin_user, Client())
    page = admin.get(reverse("accounts:user_list"))
    assert b"locked" in page.content and reverse("accounts:user_unlock", args=[vera.pk]).encode() in page.content
    response = admin.post(reverse("accounts:user_unlock", args=[vera.pk]), follow=True)
    assert b"vera is unlocked and may log in again." in response.content
    (unlocked,) = events(AuditAction.USER_UNLOCKED)
    assert unlocked.actor_name == admin_user.username and unlocked.target == "user:vera"
    assert unlocked.data["attempt_records_cleared"] >= 1

    response = login(client, "vera")
    assert response.status_code == 302 and client.session["_auth_user_id"] == str(vera.pk)


def test_wrong_codes_count_towards_the_lockout(admin_user, make_user):
    approver = make_user("anna", Role.APPROVER)
    device = TOTPDevice.objects.get(user=approver)
    client = Client()
    limit = django_settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert login(client, "anna", code=wrong_code(device)).status_code == 200
    response = login(client, "anna", code=wrong_code(device))
    assert response.status_code == 403 and b"Too many failed attempts" in response.content
    assert len(events(AuditAction.TOTP_REJECTED)) == limit
    assert len(events(AuditAction.LOGIN_LOCKED_OUT)) == 1
    assert login(client, "anna", code=totp_now(device)).status_code == 403


def test_logout_is_post_only_and_audited(admin_user, make_user, login_client):
    vera = make_user("vera", Role.VIEWER)
    client = login_client(vera, Client())
    assert client.get(reverse("accounts:logout")).status_code == 405
    key = client.session.session_key
    response = client.post(reverse("accounts:logout"))
    assert response.status_code == 302 and response["Location"] == reverse("accounts:login")
    assert not Session.objects.filter(session_key=key).exists()
    (event,) = events(AuditAction.LOGOUT)
    assert event.actor_name == "vera"


def test_login_page_never_500s_on_junk(admin_user):
    client = Client()
    for data in ({}, {"username": "x" * 500, "password": "p"}, {"username": "\x00", "password": "\x00"}, {"password": "p"}):
        response = client.post(LOGIN, data)
        assert response.status_code in (200, 403), data


@pytest.mark.django_db
def test_a_polled_part_of_a_page_whose_session_ended_sends_the_whole_page_to_the_login(client):
    """htmx polls the join's status (or a job's progress): once the session is gone (it
    expired, or the node moved onto the cluster's database and its own accounts with
    it), the answer sends the page to the login page instead of the login form being
    swapped into the polled part."""
    polled = client.get("/setup/join/status/", HTTP_HX_REQUEST="true",
                        HTTP_HX_CURRENT_URL="http://testserver/setup/join/status/?x=1")
    assert polled.status_code == 200 and polled["HX-Redirect"] == "/account/login/?next=/setup/join/status/%3Fx%3D1"
    assert b"<form" not in polled.content
    # a whole page (and a boosted navigation) is redirected as before
    page = client.get("/setup/join/status/")
    assert page.status_code == 302 and page["Location"] == "/account/login/?next=/setup/join/status/"
    boosted = client.get("/setup/join/status/", HTTP_HX_REQUEST="true", HTTP_HX_BOOSTED="true")
    assert boosted.status_code == 302 and "HX-Redirect" not in boosted
