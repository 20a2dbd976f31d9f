"""Hardening of the web layer: a refused CSRF check gets the console's page and an audit
event; no page shown to a logged-in user may be cached."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from tests.conftest import PASSWORD
from tests.support.audit import events

pytestmark = pytest.mark.django_db


def denied_events():
    return events(AuditAction.ACCESS_DENIED)


# --- CSRF ---------------------------------------------------------------------------------
def test_csrf_refusal_is_styled_and_audited_for_anonymous(admin_user):
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("accounts:login"), {"username": "root-admin", "password": PASSWORD})
    assert response.status_code == 403
    assert "core/403_csrf.html" in [t.name for t in response.templates]
    assert "base.html" in [t.name for t in response.templates]  # the console's layout
    body = response.content.decode()
    assert "Form refused" in body and "CSRF verification failed" not in body
    assert "no-store" in response["Cache-Control"]
    (event,) = denied_events()
    assert event.outcome == Outcome.DENIED and event.target == reverse("accounts:login")
    assert event.data["reason"] == "csrf" and event.data["method"] == "POST"
    assert "CSRF" in event.data["detail"]
    assert PASSWORD not in event.details
    assert "_auth_user_id" not in client.session


def test_csrf_refusal_names_the_logged_in_actor(admin_user, login_client):
    client = login_client(admin_user, Client(enforce_csrf_checks=True))
    response = client.post(reverse("accounts:logout"))
    assert response.status_code == 403
    (event,) = denied_events()
    assert event.actor_name == admin_user.username and event.data["reason"] == "csrf"
    assert client.session.get("_auth_user_id") == str(admin_user.pk)  # not logged out


def test_a_form_with_its_token_passes(admin_user, make_user):
    make_user("vera", Role.VIEWER)
    client = Client(enforce_csrf_checks=True)
    client.get(reverse("accounts:login"))
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    response = client.post(
        reverse("accounts:login"), {"username": "vera", "password": PASSWORD, "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    assert not denied_events()


# --- Cache-Control --------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/", "/audit/", "/jobs/"])
def test_pages_for_a_logged_in_user_are_never_stored(admin_user, login_client, url):
    client = login_client(admin_user, Client())
    response = client.get(url)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"], url


def test_refusals_and_redirects_for_a_logged_in_user_are_never_stored(admin_user, make_user, login_client):
    client = login_client(make_user("vera", Role.VIEWER), Client())
    assert "no-store" in client.get("/audit/")["Cache-Control"]  # 403
    operator = login_client(make_user("olga", Role.OPERATOR, totp=False), Client())
    assert "no-store" in operator.get("/")["Cache-Control"]  # 302 to TOTP enrolment


def test_anonymous_static_answers_are_not_marked(admin_user, client):
    response = client.get("/healthz")
    assert "no-store" not in response.get("Cache-Control", "")
