"""The licence page, installing and replacing a licence, the expiry banner, the role
checks and the production guard against the test key."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.template.loader import render_to_string
from django.test import Client, RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.core.memo import forget_all
from pamportal.licensing.context_processors import banner_for, licence_banner
from pamportal.licensing.models import Licence
from pamportal.licensing.selectors import licence_current, licence_status
from pamportal.licensing.services import LicenceRefused, licence_install
from tests.licensing.helpers import minted, refusals, upload
from tests.support.audit import events as _events

pytestmark = pytest.mark.django_db

T = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def test_mint_upload_and_the_page_shows_it(admin):
    data = minted(customer="ACME Ltd", edition="enterprise", max_nodes=7, features=("audit-export", "sso"),
                  licence_id="LIC-ACME-1", days=366)
    response = upload(admin, data)
    assert response.status_code == 302 and response["Location"] == reverse("licensing:detail")

    page = admin.get(reverse("licensing:detail"))
    text = page.content.decode()
    assert page.status_code == 200
    for expected in ("ACME Ltd", "enterprise", "7 nodes", "audit-export", "sso", "LIC-ACME-1", "root-admin",
                     "Days left</dt><dd>365<"):
        assert expected in text, expected
    assert "Licence LIC-ACME-1 installed" in text  # the success message
    licence = licence_current()
    assert licence.licence_id == "LIC-ACME-1" and bytes(licence.raw) == data
    (event,) = _events(AuditAction.LICENCE_INSTALLED)
    assert event.target == "licence:LIC-ACME-1" and event.outcome == Outcome.SUCCEEDED
    assert event.data["max_nodes"] == 7 and event.data["replaced"] == []
    assert event.actor_name == "root-admin"


def test_replacing_keeps_history(admin):
    assert upload(admin, minted(customer="First Co", licence_id="LIC-1")).status_code == 302
    assert upload(admin, minted(customer="Second Co", licence_id="LIC-2", max_nodes=9)).status_code == 302

    first, second = Licence.objects.order_by("pk")
    assert first.replaced_at is not None and second.replaced_at is None
    assert licence_current() == second
    assert licence_status().max_nodes == 9
    text = admin.get(reverse("licensing:detail")).content.decode()
    history = text.split("<h2>History</h2>", 1)[1]
    assert history.index("LIC-2") < history.index("LIC-1")  # newest first
    assert history.count("<strong>current</strong>") == 1
    assert _events(AuditAction.LICENCE_INSTALLED)[1].data["replaced"] == ["LIC-1"]


def test_history_page_does_not_query_per_row(admin, admin_user):
    licence_install(data=minted(licence_id="LIC-Q0"), user=admin_user)
    url = reverse("licensing:detail")
    forget_all()  # both views read cold, whatever the time between them (core.memo)
    with CaptureQueriesContext(connection) as one:
        admin.get(url)
    for index in range(1, 6):
        licence_install(data=minted(licence_id=f"LIC-Q{index}"), user=admin_user)
    forget_all()
    with CaptureQueriesContext(connection) as six:
        text = admin.get(url).content.decode()
    assert all(f"LIC-Q{index}" in text for index in range(6))
    assert len(six) == len(one)


def test_status_without_a_licence():
    status = licence_status()
    assert not status.ok and status.max_nodes == 0 and status.days_left is None
    assert status.message.startswith("No licence is installed.")
    assert banner_for(status).title == "No valid licence"


def _install_ending(admin_user, end: datetime) -> Licence:
    return licence_install(data=minted(starts=T - timedelta(days=10), days=(end - T).total_seconds() / 86400 + 10),
                           user=admin_user, now=T)


def test_banner_from_thirty_days_before_expiry(admin_user):
    _install_ending(admin_user, T + timedelta(days=30))
    status = licence_status(now=T)
    assert status.ok and status.expiring_soon and status.days_left == 30
    banner = banner_for(status)
    assert (banner.level, banner.title) == ("warning", "Licence expires in 30 days")
    html = render_to_string("licensing/_banner.html", {"licence_banner": banner, "can": {"licence.view"}})
    assert "Licence expires in 30 days" in html and 'class="message message-warning licence-banner"' in html


def test_no_banner_at_thirty_one_days(admin_user):
    _install_ending(admin_user, T + timedelta(days=31))
    status = licence_status(now=T)
    assert status.ok and not status.expiring_soon and status.days_left == 31
    assert banner_for(status) is None
    assert render_to_string("licensing/_banner.html", {"licence_banner": None}).strip() == ""
    # One second later it is 30 days and a bit: rounded up, 31 days, still no banner.
    assert not licence_status(now=T + timedelta(seconds=1)).expiring_soon
    assert licence_status(now=T + timedelta(days=1)).expiring_soon


def test_expired_licence_means_no_valid_licence(admin_user):
    _install_ending(admin_user, T + timedelta(days=5))
    status = licence_status(now=T + timedelta(days=5))
    assert not status.ok and status.max_nodes == 0
    assert status.message.startswith("This licence expired on 2026-06-06")
    banner = banner_for(status)
    assert (banner.level, banner.title) == ("error", "No valid licence")


def test_context_processor_on_a_real_page(admin, admin_user):
    licence_install(data=minted(starts=datetime.now(timezone.utc) - timedelta(days=1), days=30.5), user=admin_user)
    templates = [dict(backend) for backend in settings.TEMPLATES]
    templates[0] = {**templates[0], "OPTIONS": {**templates[0]["OPTIONS"], "context_processors": [
        *templates[0]["OPTIONS"]["context_processors"], "pamportal.licensing.context_processors.licence_banner"]}}
    with override_settings(TEMPLATES=templates):
        response = admin.get(reverse("licensing:detail"))
    assert response.context["licence_banner"].title == "Licence expires in 30 days"
    anonymous = RequestFactory().get("/")
    anonymous.user = AnonymousUser()
    assert licence_banner(anonymous) == {"licence_banner": None}


def test_an_edited_database_row_does_not_change_what_is_licensed(admin_user):
    licence = licence_install(data=minted(max_nodes=3), user=admin_user)
    Licence.objects.filter(pk=licence.pk).update(max_nodes=300, not_after=T + timedelta(days=9999))
    status = licence_status()
    assert status.ok and status.max_nodes == 3
    Licence.objects.filter(pk=licence.pk).update(raw=bytes(licence.raw).replace(b'"format"', b'"formaT"'))
    status = licence_status()
    assert not status.ok and status.message == "This file is not a pamportal licence."


def test_test_key_licence_refused_under_production_settings(admin_user):
    data = minted()
    with override_settings(PRODUCTION=True):
        with pytest.raises(LicenceRefused) as refused:
            licence_install(data=data, user=admin_user)
    assert refused.value.code == "test_key"
    assert "test vendor key" in refused.value.message
    assert not Licence.objects.exists()
    (event,) = refusals()
    assert event.outcome == Outcome.DENIED and event.data["code"] == "test_key"


def test_test_key_licence_stops_counting_under_production_settings(admin_user):
    licence_install(data=minted(), user=admin_user)
    assert licence_status().ok
    with override_settings(PRODUCTION=True):
        status = licence_status()
    assert not status.ok and status.max_nodes == 0 and "test vendor key" in status.message


def test_the_refusal_audit_survives_even_though_nothing_is_installed(admin_user):
    # The install runs in a transaction (here a savepoint) that is rolled back; an
    # audit event written inside it would vanish with it. The refusal is recorded
    # after that, in a transaction of its own, so it is still there.
    with pytest.raises(LicenceRefused):
        licence_install(data=b"{}", user=admin_user)
    assert [e.data["code"] for e in refusals()] == ["not_a_licence"]
    assert not Licence.objects.exists()


# --- Who may do what ---------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.AUDITOR, Role.ADMINISTRATOR])
def test_everyone_signed_in_sees_the_licence_page(role, make_user, login_client, admin_user):
    licence_install(data=minted(customer="Visible Ltd"), user=admin_user)
    client = login_client(make_user(f"user-{role}", role), Client())
    response = client.get(reverse("licensing:detail"))
    assert response.status_code == 200 and b"Visible Ltd" in response.content
    assert (b"Replace the licence" in response.content) == (role == Role.ADMINISTRATOR)


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.AUDITOR])
def test_only_administrators_upload(role, make_user, login_client, admin_user):
    client = login_client(make_user(f"user-{role}", role), Client())
    assert client.get(reverse("licensing:upload")).status_code == 403
    assert upload(client, minted()).status_code == 403
    assert not Licence.objects.exists()
    assert not refusals()
    assert _events(AuditAction.ACCESS_DENIED)[-1].target == reverse("licensing:upload")


def test_administrator_gets_the_upload_form(admin):
    response = admin.get(reverse("licensing:upload"))
    assert response.status_code == 200
    assert b'name="licence_file"' in response.content and b'enctype="multipart/form-data"' in response.content


def test_anonymous_goes_to_login(client, admin_user):
    for name in ("licensing:detail", "licensing:upload"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and reverse("accounts:login") in response["Location"]
