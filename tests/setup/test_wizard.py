"""The first-boot wizard through its real URLs: token, administrator, TOTP, done."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from pamportal.accounts.models import TOTPDevice
from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.setup import administrator
from pamportal.setup import token as tokens
from pamportal.setup.models import SetupToken
from tests.accounts.helpers import events
from tests.conftest import totp_fresh, totp_now

pytestmark = pytest.mark.django_db

ADMIN_PASSWORD = "a long and unusual passphrase 42"


def _post_token(client, token):
    return client.post(reverse("setup:token"), {"token": token})


def _wizard_device(client) -> TOTPDevice:
    state = client.session["pam_setup"]
    return administrator.setup_totp_device(username=state["username"], key=state["totp_key"])


def _through_admin_step(client, token, username="first-admin"):
    assert _post_token(client, token)["Location"] == reverse("setup:administrator")
    response = client.post(
        reverse("setup:administrator"), {"username": username, "password1": ADMIN_PASSWORD, "password2": ADMIN_PASSWORD}
    )
    assert response.status_code == 302 and response["Location"] == reverse("setup:totp")


def _no_admin():
    assert not get_user_model().objects.filter(role=Role.ADMINISTRATOR).exists()


def test_every_page_leads_to_setup_until_an_administrator_exists(client):
    for url in ("/", reverse("accounts:login"), reverse("accounts:user_list")):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"] == reverse("setup:start")
    assert client.get(reverse("setup:start"))["Location"] == reverse("setup:token")


def test_full_wizard_creates_administrator_with_totp_and_logs_in(client, data_dir, django_capture_on_commit_callbacks):
    issued = tokens.setup_token_issue()
    assert (data_dir / "setup-token").exists()
    page = client.get(reverse("setup:token"))
    assert page.status_code == 200
    html = page.content.decode()
    # The step list names every step; the ones not reached yet are not links.
    for title in ("Setup token", "Administrator", "Node address", "Preflight", "Licence", "Master Encryption Key", "Finalise"):
        assert title in html
    assert re.search(r'<li class="pending">\s*Preflight', html)
    assert re.search(r'<li class="current" aria-current="step">Setup token', html)
    assert 'href="/setup/preflight' not in html

    _through_admin_step(client, f"  {issued.token.lower()} ")  # case and spaces do not matter
    assert events(AuditAction.SETUP_TOKEN_ACCEPTED)

    # Refreshing resumes the wizard at the TOTP step, with the same secret.
    assert client.get(reverse("setup:start"))["Location"] == reverse("setup:totp")
    page = client.get(reverse("setup:totp"))
    html = page.content.decode()
    assert "<svg" in html and 'class="qr"' in html and "style=" not in html
    device = _wizard_device(client)
    assert administrator.base32_secret(device.key) in html
    assert client.get(reverse("setup:totp")).content.decode().count(administrator.base32_secret(device.key)) == 1

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("setup:totp"), {"otp_token": totp_fresh(device)})
    assert response.status_code == 302 and response["Location"] == reverse("setup:node")

    admin = get_user_model().objects.get(username="first-admin")
    assert admin.role == Role.ADMINISTRATOR and admin.is_active and admin.check_password(ADMIN_PASSWORD)
    saved = TOTPDevice.objects.get(user=admin)
    assert saved.confirmed and saved.key == device.key
    token_row = SetupToken.objects.get()
    assert token_row.used_at is not None
    assert not (data_dir / "setup-token").exists()
    (created,) = events(AuditAction.SETUP_ADMIN_CREATED)
    assert created.target == "user:first-admin" and created.outcome == Outcome.SUCCEEDED
    # Logged in, second factor verified, wizard state gone.
    session = client.session
    assert session["_auth_user_id"] == str(admin.pk) and session.get("otp_device_id") == saved.persistent_id
    assert "pam_setup" not in session
    assert events(AuditAction.LOGIN_SUCCEEDED)[-1].data["via"] == "setup"

    # Log out and back in with the authenticator (a later time step: the setup code is spent).
    assert client.post(reverse("accounts:logout")).status_code == 302
    response = client.post(
        reverse("accounts:login"),
        {"username": "first-admin", "password": ADMIN_PASSWORD, "otp_token": totp_fresh(saved)},
    )
    assert response.status_code == 302 and response["Location"] == reverse("nodes:dashboard")
    assert client.get(reverse("accounts:user_list")).status_code == 200

    # /setup/ now leads the administrator on to the node's own setup; to anyone else
    # it says that setup is complete and links to the login page.
    assert client.get(reverse("setup:start"))["Location"] == reverse("setup:node")
    client.post(reverse("accounts:logout"))
    page = client.get(reverse("setup:start"))
    assert page.status_code == 200 and b"Setup is complete" in page.content
    assert reverse("accounts:login").encode() in page.content


def test_wrong_token_is_refused_with_message_and_audit(client):
    tokens.setup_token_issue()
    response = _post_token(client, "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGG-HHHH")
    assert response.status_code == 200
    assert b"That is not the setup token printed at the console" in response.content
    (event,) = events(AuditAction.SETUP_TOKEN_REJECTED)
    assert event.outcome == Outcome.DENIED and event.data["reason"] == "wrong"
    assert "pam_setup" not in client.session
    assert client.get(reverse("setup:administrator"))["Location"] == reverse("setup:token")
    _no_admin()


@pytest.mark.parametrize("junk", ["", "   ", "x" * 199, "'; DROP TABLE users; --", "\u202e\u0000abc"])
def test_junk_tokens_never_500(client, junk):
    tokens.setup_token_issue()
    response = _post_token(client, junk)
    assert response.status_code == 200
    assert b"setup token" in response.content.lower()
    _no_admin()


def test_expired_token_is_refused(client):
    issued = tokens.setup_token_issue()
    SetupToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = _post_token(client, issued.token)
    assert response.status_code == 200
    assert b"expired; run `manage.py setup_token` at the node&#x27;s console for a new one" in response.content
    (event,) = events(AuditAction.SETUP_TOKEN_REJECTED)
    assert event.data["reason"] == "expired"
    _no_admin()


def test_replaced_token_is_refused(client):
    first = tokens.setup_token_issue()
    tokens.setup_token_issue()
    response = _post_token(client, first.token)
    assert b"replaced by a newer one" in response.content
    assert events(AuditAction.SETUP_TOKEN_REJECTED)[0].data["reason"] == "replaced"
    _no_admin()


def test_reused_token_is_refused_after_setup(client, django_capture_on_commit_callbacks):
    issued = tokens.setup_token_issue()
    _through_admin_step(client, issued.token)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("setup:totp"), {"otp_token": totp_now(_wizard_device(client))})
    users_before = get_user_model().objects.count()

    other = client.__class__()
    response = _post_token(other, issued.token)
    assert response.status_code == 403
    assert b"already been used" in response.content and b"Setup is complete" in response.content
    assert events(AuditAction.SETUP_TOKEN_REJECTED)[-1].data["reason"] == "already used"
    assert get_user_model().objects.count() == users_before


def test_used_token_is_refused_even_without_administrator(client):
    issued = tokens.setup_token_issue()
    SetupToken.objects.update(used_at=timezone.now())
    response = _post_token(client, issued.token)
    assert b"already been used" in response.content
    assert events(AuditAction.SETUP_TOKEN_REJECTED)[0].data["reason"] == "already used"


def test_guessing_is_limited_per_address(client):
    issued = tokens.setup_token_issue()
    for _ in range(tokens.MAX_REJECTIONS):
        _post_token(client, "WRONG")
    response = _post_token(client, issued.token)  # even the right one, now
    assert b"Too many wrong setup tokens" in response.content
    assert events(AuditAction.SETUP_TOKEN_REJECTED)[-1].data["reason"] == "too many attempts"
    assert len(events(AuditAction.SETUP_TOKEN_REJECTED)) == tokens.MAX_REJECTIONS + 1
    assert not events(AuditAction.SETUP_TOKEN_ACCEPTED)


def test_bad_totp_code_at_setup_is_refused_and_audited(client):
    issued = tokens.setup_token_issue()
    _through_admin_step(client, issued.token)
    device = _wizard_device(client)
    wrong = f"{(int(totp_now(device)) + 1) % 1_000_000:06d}"
    response = client.post(reverse("setup:totp"), {"otp_token": wrong})
    assert response.status_code == 200
    assert b"That code does not match" in response.content
    (event,) = events(AuditAction.SETUP_TOTP_REJECTED)
    assert event.outcome == Outcome.DENIED and event.target == "user:first-admin"
    _no_admin()
    for junk in ("abc", "12345", "1234567", ""):
        response = client.post(reverse("setup:totp"), {"otp_token": junk})
        assert response.status_code == 200
        assert b"6 digits your authenticator app shows" in response.content or b"Enter the 6-digit code" in response.content
    _no_admin()
    # The right code still works afterwards.
    response = client.post(reverse("setup:totp"), {"otp_token": totp_now(device)})
    assert response["Location"] == reverse("setup:node")


def test_administrator_step_validates_passwords(client):
    issued = tokens.setup_token_issue()
    _post_token(client, issued.token)
    url = reverse("setup:administrator")
    response = client.post(url, {"username": "admin", "password1": ADMIN_PASSWORD, "password2": ADMIN_PASSWORD + "x"})
    assert response.status_code == 200 and b"The two passwords are not the same" in response.content
    response = client.post(url, {"username": "admin", "password1": "short", "password2": "short"})
    assert response.status_code == 200 and b"too short" in response.content
    response = client.post(url, {"username": "bad name!", "password1": ADMIN_PASSWORD, "password2": ADMIN_PASSWORD})
    assert response.status_code == 200 and b"Enter a valid username" in response.content
    assert "username" not in client.session["pam_setup"]
    assert client.get(reverse("setup:totp"))["Location"] == url


def test_token_replaced_mid_wizard_sends_operator_back(client):
    issued = tokens.setup_token_issue()
    _through_admin_step(client, issued.token)
    tokens.setup_token_issue()  # the console printed a new one meanwhile
    response = client.get(reverse("setup:totp"))
    assert response["Location"] == reverse("setup:token")
    assert "pam_setup" not in client.session


def test_token_used_elsewhere_before_the_last_step_creates_nothing(client):
    issued = tokens.setup_token_issue()
    _through_admin_step(client, issued.token)
    device = _wizard_device(client)
    # Another browser finished with the same token in the meantime: the wizard notices.
    SetupToken.objects.update(used_at=timezone.now())
    response = client.post(reverse("setup:totp"), {"otp_token": totp_now(device)}, follow=True)
    assert b"no longer valid" in response.content
    _no_admin()


def test_admin_create_rechecks_the_token_under_lock():
    issued = tokens.setup_token_issue()
    row = SetupToken.objects.get()
    SetupToken.objects.update(used_at=timezone.now())
    with pytest.raises(tokens.SetupRefused) as refused:
        administrator.setup_admin_create(
            token_id=row.pk, username="late", password_hash="!", totp_key="00" * 20, totp_t=1, totp_drift=0
        )
    assert "already been used" in refused.value.message
    _no_admin()
    assert not TOTPDevice.objects.exists()
    event = events(AuditAction.SETUP_TOKEN_REJECTED)[-1]
    assert event.data == {"reason": "already used", "stage": "create administrator"}
    assert issued.token not in event.details
