"""Every broken licence file in the corpus, uploaded through the real page by an
administrator: refused with its own message, never a 500, nothing changed, one audit
event each."""

from __future__ import annotations

import pytest
from django.utils.html import escape

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.models import AuditEvent
from pamportal.licensing.models import Licence
from pamportal.licensing.selectors import licence_current
from pamportal.licensing.services import licence_install
from tests.licensing.corpus import CORPUS
from tests.licensing.helpers import minted, refusals, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def installed(admin_user):
    """A licence already in place, so that "nothing changed" has something to keep."""
    return licence_install(data=minted(customer="Baseline Ltd", licence_id="LIC-BASELINE"), user=admin_user)


def _state():
    return list(Licence.objects.order_by("pk").values_list("pk", "sha256", "replaced_at", "max_nodes"))


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_broken_file_is_refused_with_its_message(case, admin, installed):
    before = _state()
    last_position = AuditEvent.objects.order_by("-position").values_list("position", flat=True).first()

    response = upload(admin, case.data)

    assert response.status_code == 400
    assert escape(case.text) in response.content.decode()
    assert _state() == before
    assert licence_current().pk == installed.pk
    (event,) = AuditEvent.objects.filter(position__gt=last_position)
    assert event.action == AuditAction.LICENCE_REFUSED and event.outcome == Outcome.DENIED
    (refusal,) = [row for row in refusals() if row.position == event.position]
    assert refusal.data["code"] == case.code
    assert refusal.data["size"] == min(len(case.data), 64 * 1024 + 1)
    assert refusal.actor_name == "root-admin"


def test_the_installed_licence_again_is_refused(admin, installed):
    before = _state()
    response = upload(admin, bytes(installed.raw))
    assert response.status_code == 400
    assert b"This licence file is already the installed licence." in response.content
    assert _state() == before
    (event,) = refusals()
    assert event.data["code"] == "already_installed"


def test_no_file_at_all_is_explained_and_changes_nothing(admin, installed):
    before_events = AuditEvent.objects.count()
    response = admin.post("/licence/upload/", {})
    assert response.status_code == 400
    assert b"Choose the licence file to upload." in response.content
    assert _state() == [(installed.pk, installed.sha256, None, installed.max_nodes)]
    assert AuditEvent.objects.count() == before_events  # nothing was uploaded
