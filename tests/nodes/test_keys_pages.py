"""The certificates page and the MEK check page, by role."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.crypto import mek
from pamportal.nodes import keystore
from pamportal.setup import wizard
from tests.accounts.helpers import events
from tests.setup.helpers import ADDRESS, through_mek

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def data_dir(data_dir):
    return data_dir


@pytest.fixture
def finalised(admin_user):
    key = through_mek(admin_user)
    wizard.setup_finalise(user=admin_user)
    return key


def test_before_finalise_the_certificates_page_shows_the_self_signed_certificate(as_role):
    call_command("tls_ensure")
    page = as_role(Role.VIEWER).get(reverse("nodes:certificates"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "self-signed, until setup is finalised" in body and "Days left" in body


@pytest.mark.parametrize("role", list(Role))
def test_every_role_sees_the_certificates(finalised, as_role, role):
    response = as_role(role).get(reverse("nodes:certificates"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Cluster CA" in body and "This node (HTTPS)" in body
    assert ADDRESS in body and "localhost" in body and "127.0.0.1" in body
    assert "Not after" in body and "Days left" in body
    assert any(f">{days}<" in body for days in (396, 397))
    assert "PRIVATE KEY" not in body


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.AUDITOR])
def test_only_administrators_check_a_mek(role, as_role):
    client = as_role(role)
    assert client.get(reverse("nodes:mek_check")).status_code == 403
    assert client.post(reverse("nodes:mek_check"), {"mek": "x"}).status_code == 403
    assert not events(AuditAction.MEK_CHECKED)


def test_mek_check_right_wrong_and_typo_all_audited_never_echoed(finalised, as_role):
    client = as_role(Role.ADMINISTRATOR)
    assert client.get(reverse("nodes:mek_check")).status_code == 200
    encoded = mek.encode(finalised)

    right = client.post(reverse("nodes:mek_check"), {"mek": encoded})
    assert right.status_code == 200 and "That is this node" in right.content.decode()
    assert encoded not in right.content.decode() and encoded.replace("-", "") not in right.content.decode()

    other = mek.encode(mek.generate())
    wrong = client.post(reverse("nodes:mek_check"), {"mek": other})
    assert wrong.status_code == 400 and "but not this node" in wrong.content.decode()
    assert other not in wrong.content.decode()

    typo = ("B" if encoded[0] == "A" else "A") + encoded[1:]
    caught = client.post(reverse("nodes:mek_check"), {"mek": typo})
    assert "a character was mistyped" in caught.content.decode() and typo not in caught.content.decode()

    empty = client.post(reverse("nodes:mek_check"), {"mek": ""})
    assert "Type the Master Encryption Key" in empty.content.decode()

    checks = events(AuditAction.MEK_CHECKED)
    assert [(e.outcome, e.data.get("reason")) for e in checks] == [
        (Outcome.SUCCEEDED, None), (Outcome.FAILED, "different key"), (Outcome.FAILED, "checksum"),
        (Outcome.FAILED, "format"),
    ]
    assert keystore.mek_load() == finalised


def test_mek_check_before_setup_says_there_is_no_key(as_role):
    response = as_role(Role.ADMINISTRATOR).post(reverse("nodes:mek_check"), {"mek": mek.encode(mek.generate())})
    assert "no confirmed Master Encryption Key" in response.content.decode()
    (event,) = events(AuditAction.MEK_CHECKED)
    assert event.outcome == Outcome.FAILED and event.data["reason"] == "no key yet"
