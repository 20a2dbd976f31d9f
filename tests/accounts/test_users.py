"""User administration through its pages: create, disable (ends sessions), enable,
reset (forces new password and TOTP enrolment), and no audit means no action."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse

from pamportal.accounts import services
from pamportal.accounts.models import TOTPDevice
from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from tests.accounts.helpers import events
from tests.conftest import totp_now

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "another quite long passphrase 7"
User = get_user_model()


@pytest.fixture
def admin(admin_user, login_client):
    return login_client(admin_user, Client())


def test_create_user_forces_password_change_at_first_login(admin, make_user):
    response = admin.post(
        reverse("accounts:user_create"),
        # A viewer: the one role that needs no TOTP, so the password change comes first.
        {"username": "olga", "role": Role.VIEWER, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
        follow=True,
    )
    assert b"User olga (Viewer) created." in response.content
    olga = User.objects.get(username="olga")
    assert olga.role == Role.VIEWER and olga.must_change_password and olga.check_password(NEW_PASSWORD)
    (event,) = events(AuditAction.USER_CREATED)
    assert event.target == "user:olga" and event.data == {"role": "viewer"}
    assert NEW_PASSWORD not in event.details

    client = Client()
    client.post(reverse("accounts:login"), {"username": "olga", "password": NEW_PASSWORD})
    assert client.get("/")["Location"] == reverse("accounts:password_change")
    page = client.get(reverse("accounts:password_change"))
    assert b"temporary password" in page.content
    response = client.post(
        reverse("accounts:password_change"),
        {"old_password": NEW_PASSWORD, "new_password1": "olga's own passphrase 99", "new_password2": "olga's own passphrase 99"},
    )
    assert response.status_code == 302
    olga.refresh_from_db()
    assert not olga.must_change_password and olga.check_password("olga's own passphrase 99")
    assert client.session["_auth_user_id"] == str(olga.pk)  # still logged in
    assert client.get("/").status_code == 200
    assert events(AuditAction.PASSWORD_CHANGED)[0].target == "user:olga"


def test_create_user_bad_input_gets_clear_messages(admin, make_user):
    make_user("taken", Role.VIEWER)
    url = reverse("accounts:user_create")
    cases = [
        ({"username": "Taken", "role": "viewer", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}, "already exists"),
        ({"username": "x y", "role": "viewer", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}, "Enter a valid username"),
        ({"username": "ok", "role": "superuser", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}, "Select a valid choice"),
        ({"username": "ok", "role": "viewer", "new_password1": NEW_PASSWORD, "new_password2": "different"}, "not the same"),
        ({"username": "ok", "role": "viewer", "new_password1": "12345678901234", "new_password2": "12345678901234"}, "entirely numeric"),
        ({}, "This field is required"),
    ]
    for data, message in cases:
        response = admin.post(url, data)
        assert response.status_code == 200, data
        assert message in response.content.decode(), data
    assert not User.objects.filter(username="ok").exists()
    assert not events(AuditAction.USER_CREATED)


def test_disable_ends_the_users_sessions_at_once(admin, make_user, login_client):
    vera = make_user("vera", Role.VIEWER)
    victim = login_client(vera, Client())
    assert victim.get(reverse("accounts:password_change")).status_code == 200
    key = victim.session.session_key
    response = admin.post(reverse("accounts:user_disable", args=[vera.pk]), follow=True)
    assert b"vera is disabled; their sessions have ended." in response.content
    assert not Session.objects.filter(session_key=key).exists()
    response = victim.get(reverse("accounts:password_change"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:login"))
    vera.refresh_from_db()
    assert not vera.is_active
    (event,) = events(AuditAction.USER_DISABLED)
    assert event.outcome == Outcome.SUCCEEDED and event.data["sessions_ended"] == 1
    # A disabled user cannot log in.
    assert Client().post(reverse("accounts:login"), {"username": "vera", "password": "correct horse battery staple"}).status_code == 200

    response = admin.post(reverse("accounts:user_enable", args=[vera.pk]), follow=True)
    assert b"vera is enabled again." in response.content
    vera.refresh_from_db()
    assert vera.is_active and events(AuditAction.USER_ENABLED)


def test_refusals_are_clear_audited_and_change_nothing(admin, admin_user):
    response = admin.post(reverse("accounts:user_disable", args=[admin_user.pk]), follow=True)
    assert b"You cannot disable your own account." in response.content
    response = admin.post(reverse("accounts:user_reset", args=[admin_user.pk]), follow=True)
    assert b"You cannot reset your own account" in response.content
    response = admin.post(reverse("accounts:user_disable", args=[999999]), follow=True)
    assert b"There is no such user." in response.content
    admin_user.refresh_from_db()
    assert admin_user.is_active
    assert [(e.action, e.outcome, e.data["reason"]) for e in events(AuditAction.USER_DISABLED)] == [
        ("user.disabled", "denied", "own account"),
        ("user.disabled", "denied", "no such user"),
    ]
    assert events(AuditAction.USER_RESET)[0].outcome == Outcome.DENIED


def test_the_last_administrator_cannot_be_disabled(admin_user, make_user, login_client):
    other = make_user("second-admin", Role.ADMINISTRATOR)
    client = login_client(other, Client())
    client.post(reverse("accounts:user_disable", args=[admin_user.pk]))
    admin_user.refresh_from_db()
    assert not admin_user.is_active
    # Now root-admin is disabled, second-admin is the last one: a third admin cannot disable them.
    third = make_user("third-admin", Role.ADMINISTRATOR)
    third_client = login_client(third, Client())
    third_client.post(reverse("accounts:user_disable", args=[other.pk]))
    other.refresh_from_db()
    assert not other.is_active
    response = client.post(reverse("accounts:user_disable", args=[third.pk]), follow=True)
    # second-admin's session ended when they were disabled
    assert response.redirect_chain[0][0].startswith(reverse("accounts:login"))
    with pytest.raises(services.AccountRefused, match="only active administrator"):
        services.user_disable(actor=None, user_id=third.pk)
    third.refresh_from_db()
    assert third.is_active


def test_reset_forces_totp_reenrolment_and_password_change(admin, make_user, login_client):
    anna = make_user("anna", Role.APPROVER)
    old_session = login_client(anna, Client())
    response = admin.post(reverse("accounts:user_reset", args=[anna.pk]))
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    temporary = re.search(r'<p class="secret">([^<]+)</p>', response.content.decode()).group(1)
    anna.refresh_from_db()
    assert anna.must_change_password and anna.check_password(temporary)
    assert not TOTPDevice.objects.filter(user=anna).exists()
    (event,) = events(AuditAction.USER_RESET)
    assert event.data == {"totp_devices_removed": 1, "sessions_ended": 1}
    assert temporary not in event.details
    assert old_session.get(reverse("accounts:password_change")).status_code == 302  # session ended

    client = Client()
    response = client.post(reverse("accounts:login"), {"username": "anna", "password": temporary})
    assert response.status_code == 302
    # Enrolment comes first, then the password change, then the console.
    assert client.get("/")["Location"] == reverse("accounts:totp_enrol")
    assert client.get(reverse("accounts:user_list"))["Location"] == reverse("accounts:totp_enrol")
    page = client.get(reverse("accounts:totp_enrol"))
    assert b"<svg" in page.content and b'class="secret"' in page.content and b"style=" not in page.content
    device = TOTPDevice.objects.get(user=anna, confirmed=False)
    assert client.get(reverse("accounts:totp_enrol")).status_code == 200
    assert TOTPDevice.objects.get(user=anna).pk == device.pk  # reloading keeps the same secret

    response = client.post(reverse("accounts:totp_enrol"), {"otp_token": f"{(int(totp_now(device)) + 1) % 1000000:06d}"})
    assert response.status_code == 200 and b"That code does not match" in response.content
    assert events(AuditAction.TOTP_REJECTED)[-1].data == {"stage": "enrolment", "reason": "wrong code"}
    device.refresh_from_db()
    assert not device.confirmed
    device.throttling_failure_timestamp = None  # skip django-otp's back-off second
    device.save()

    response = client.post(reverse("accounts:totp_enrol"), {"otp_token": totp_now(device)})
    assert response.status_code == 302
    device.refresh_from_db()
    assert device.confirmed and events(AuditAction.TOTP_ENROLLED)[0].target == "user:anna"
    assert client.get("/")["Location"] == reverse("accounts:password_change")
    response = client.post(
        reverse("accounts:password_change"),
        {"old_password": temporary, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("role", [Role.APPROVER, Role.ADMINISTRATOR])
def test_roles_needing_totp_are_sent_to_enrolment_before_anything_else(admin_user, make_user, role):
    make_user("newbie", role, totp=False)
    client = Client()
    assert client.post(reverse("accounts:login"), {"username": "newbie", "password": "correct horse battery staple"}).status_code == 302
    for url in ("/", reverse("accounts:user_list"), reverse("accounts:password_change"), "/jobs/", "/audit/"):
        response = client.get(url)
        if url == reverse("accounts:password_change"):
            assert response.status_code == 200  # allowed: nothing else is
            continue
        assert response.status_code == 302 and response["Location"] == reverse("accounts:totp_enrol"), url


def test_viewer_without_totp_is_not_forced(admin_user, make_user, login_client):
    client = login_client(make_user("vera", Role.VIEWER), Client())
    assert client.get("/").status_code == 200


def test_session_without_its_second_factor_is_ended(admin_user, make_user):
    anna = make_user("anna", Role.APPROVER)
    client = Client()
    client.force_login(anna, backend="django.contrib.auth.backends.ModelBackend")  # no OTP step
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == reverse("accounts:login")
    assert "_auth_user_id" not in client.session


def test_user_pages_need_users_manage(admin_user, make_user, login_client):
    target = make_user("vera", Role.VIEWER)
    anonymous = Client()
    assert anonymous.get(reverse("accounts:user_list"))["Location"].startswith(reverse("accounts:login"))
    for role in (Role.VIEWER, Role.OPERATOR, Role.APPROVER):
        client = login_client(make_user(f"u-{role}", role), Client())
        assert client.get(reverse("accounts:user_list")).status_code == 403
        assert client.get(reverse("accounts:user_create")).status_code == 403
        assert client.post(reverse("accounts:user_disable", args=[target.pk])).status_code == 403
    target.refresh_from_db()
    assert target.is_active
    assert events(AuditAction.ACCESS_DENIED)


def test_changes_are_post_only(admin, admin_user, make_user):
    vera = make_user("vera", Role.VIEWER)
    for name in ("user_disable", "user_enable", "user_reset", "user_unlock"):
        assert admin.get(reverse(f"accounts:{name}", args=[vera.pk])).status_code == 405


def test_user_list_shows_each_users_state(admin, make_user, django_assert_max_num_queries):
    for i in range(5):
        make_user(f"user{i}", Role.APPROVER)
    with django_assert_max_num_queries(12):
        page = admin.get(reverse("accounts:user_list"))
    assert page.status_code == 200
    assert page.content.decode().count("enrolled") >= 6


def test_an_action_whose_audit_write_fails_changes_nothing(admin, make_user, monkeypatch):
    vera = make_user("vera", Role.VIEWER)

    def broken(**kwargs):
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(services, "audit_record", broken)
    with pytest.raises(RuntimeError):
        admin.post(
            reverse("accounts:user_create"),
            {"username": "olga", "role": "operator", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
        )
    assert not User.objects.filter(username="olga").exists()
    with pytest.raises(RuntimeError):
        services.user_disable(actor=None, user_id=vera.pk)
    vera.refresh_from_db()
    assert vera.is_active
    with pytest.raises(RuntimeError):
        services.user_reset(actor=None, user_id=vera.pk)
    vera.refresh_from_db()
    assert vera.check_password("correct horse battery staple") and not vera.must_change_password
