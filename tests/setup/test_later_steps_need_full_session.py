"""Hardening: only the token, first-administrator and TOTP steps of the wizard are open
to a session that has not passed the account policy. Every later step (node,
preflight, licence, MEK, finalise, join) needs TOTP passed and a changed password."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from tests.accounts.helpers import events

from .helpers import through_licence

pytestmark = pytest.mark.django_db

LATER_GET = ["setup:node", "setup:preflight", "setup:licence", "setup:mek", "setup:finalise",
             "setup:join", "setup:join_status"]
LATER_POST = ["setup:node", "setup:preflight_start", "setup:preflight_next", "setup:licence",
              "setup:licence_next", "setup:mek_generate", "setup:mek_download", "setup:mek_confirm",
              "setup:mek_discard", "setup:finalise", "setup:join", "setup:join_check", "setup:join_send"]


def _at_the_mek_step(admin_user, make_user, *, must_change=False, totp=True):
    """A second administrator, with the node brought to the MEK step (so that before the
    fix the MEK page itself answered, not a redirect to an earlier step)."""
    through_licence(admin_user)
    user = make_user("second-admin", Role.ADMINISTRATOR, totp=totp)
    if must_change:
        user.must_change_password = True
        user.save(update_fields=["must_change_password"])
    return user


def _assert_every_later_step_sends_to(client, location):
    for name in LATER_GET:
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"] == location, (name, response.status_code)
    for name in LATER_POST:
        response = client.post(reverse(name))
        assert response.status_code == 302 and response["Location"] == location, (name, response.status_code)


def test_initial_password_not_changed_is_sent_to_change_it(admin_user, make_user, login_client):
    user = _at_the_mek_step(admin_user, make_user, must_change=True)
    client = login_client(user, Client())
    _assert_every_later_step_sends_to(client, reverse("accounts:password_change"))
    assert not events(AuditAction.MEK_GENERATED) and not events(AuditAction.MEK_SHOWN)


def test_administrator_without_totp_is_sent_to_enrol(admin_user, make_user, login_client):
    user = _at_the_mek_step(admin_user, make_user, totp=False)
    client = login_client(user, Client())
    _assert_every_later_step_sends_to(client, reverse("accounts:totp_enrol"))
    assert not events(AuditAction.MEK_GENERATED)


def test_session_that_did_not_pass_totp_is_ended(admin_user, make_user):
    user = _at_the_mek_step(admin_user, make_user)
    for name in LATER_GET:
        client = Client()
        client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")  # no OTP step
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"] == reverse("accounts:login"), name
        assert "_auth_user_id" not in client.session
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    assert client.post(reverse("setup:mek_generate"))["Location"] == reverse("accounts:login")
    assert not events(AuditAction.MEK_GENERATED)


def test_a_full_session_still_reaches_the_mek_step(admin_user, make_user, login_client):
    user = _at_the_mek_step(admin_user, make_user)
    client = login_client(user, Client())
    assert client.get(reverse("setup:mek")).status_code == 200


def test_the_open_steps_stay_open_to_a_session_without_totp(admin_user, make_user, login_client):
    # The token step answers (it explains that setup is complete) rather than sending a
    # half-enrolled administrator to TOTP enrolment.
    client = login_client(make_user("second-admin", Role.ADMINISTRATOR, totp=False), Client())
    for name in ("setup:start", "setup:token", "setup:administrator", "setup:totp"):
        response = client.get(reverse(name))
        assert response.get("Location") != reverse("accounts:totp_enrol"), name
