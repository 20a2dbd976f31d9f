"""The audit writer never fails on a Python string: a lone surrogate or a NUL anywhere
(target, actor, details keys and values) is stored as its escape, hashed as stored, and
the chain verifies. And the inputs that used to carry such strings to it (the setup
API's join, both licence upload pages) refuse them with their own code, one audit event
and a 4xx answer instead of a 500 with no event."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from pamportal.audit import chain
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.models import AuditEvent
from pamportal.audit.selectors import audit_chain_verify
from pamportal.audit.services import audit_record
from pamportal.crypto import licence as fmt
from pamportal.licensing.models import Licence
from tests.cluster.conftest import data_dir, fake_etcd, leader  # noqa: F401  (fixtures)
from tests.licensing.helpers import minted

pytestmark = pytest.mark.django_db

NASTY = "a\ud800b\udfff\x00c"
ESCAPED = "a\\ud800b\\udfff\\u0000c"


def test_storable_text_escapes_only_what_cannot_be_stored():
    assert chain.storable_text(NASTY) == ESCAPED
    assert chain.storable_text(ESCAPED) == ESCAPED  # idempotent: stored values hash as written
    assert chain.storable_text("Société 😀 \\ud800") == "Société 😀 \\ud800"
    ESCAPED.encode("utf-8")


def test_hashing_never_fails_on_any_string():
    from datetime import datetime, timezone

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    digest = chain.event_hash(1, now, None, NASTY, "", "", "x", NASTY, "denied", "{}", chain.GENESIS_HASH)
    assert digest == chain.event_hash(1, now, None, ESCAPED, "", "", "x", ESCAPED, "denied", "{}", chain.GENESIS_HASH)


def test_an_event_full_of_unstorable_text_is_written_escaped_and_the_chain_verifies():
    audit_record(
        action=AuditAction.LICENCE_REFUSED, outcome=Outcome.DENIED, target=NASTY, actor_name=NASTY,
        details={NASTY: NASTY, "list": [NASTY, {NASTY: 1}], "n": 1},
    )
    event = AuditEvent.objects.get()
    assert event.target == ESCAPED and event.actor_name == ESCAPED
    details = json.loads(event.details)
    assert details[ESCAPED] == ESCAPED and details["list"] == [ESCAPED, {ESCAPED: 1}]
    assert "\\u0000" not in event.details.replace("\\\\u0000", "")  # no NUL escape JSON would turn back into NUL
    assert event.hash == chain.event_hash(
        event.position, event.time, event.actor_id, event.actor_name, event.source_ip, event.request_id,
        event.action, event.target, event.outcome, event.details, event.prev_hash,
    )
    assert audit_chain_verify().ok


def _join_refused_event():
    return AuditEvent.objects.filter(action=AuditAction.CLUSTER_JOIN_REFUSED).order_by("position").last()


@pytest.mark.parametrize("field, escape, code", [
    ("bundle_id", "\\ud800", "lone_surrogate"),
    ("follower_version", "\\ud800", "lone_surrogate"),
    ("follower_version", "\\u0000", "nul_character"),
])
def test_the_join_api_refuses_unstorable_text_with_its_own_code(leader, client, field, escape, code):
    fields = {"bundle_id": '"b"', "token": '"t"', "follower_address": '"127.0.0.12"', "follower_version": '"1.0.0"',
              "csr_pem": '"x"', "preflight_summary": "{}", "proof": '"p"'}
    fields[field] = f'"{escape}"'
    body = "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
    before = AuditEvent.objects.count()
    response = client.post("/api/setup/v1/join", data=body.encode(), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code and field in response.json()["error"]["message"]
    assert AuditEvent.objects.count() == before + 1
    assert json.loads(_join_refused_event().details)["code"] == code
    assert audit_chain_verify().ok


def _envelope_with(**raw_fields) -> bytes:
    """The minted licence's envelope with some fields written as raw JSON text."""
    document = json.loads(minted())
    parts = [f"{json.dumps(k)}:{raw_fields.pop(k, json.dumps(v))}" for k, v in document.items()]
    parts += [f"{k}:{v}" for k, v in raw_fields.items()]
    return ("{" + ",".join(parts) + "}").encode()


LICENCE_CASES = [
    ("key-id-surrogate", _envelope_with(key_id='"\\ud800"'), "lone_surrogate"),
    ("extra-key-surrogate", _envelope_with(**{'"\\udfff"': "1"}), "lone_surrogate"),
    ("duplicate-key-surrogate", _envelope_with(**{'"\\ud800"': "1"}).replace(b"}", b',"\\ud800":2}'), "lone_surrogate"),
    ("key-id-nul", _envelope_with(key_id='"a\\u0000"'), "nul_character"),
    ("payload-surrogate", fmt.sign_document(b'{"customer":"\\ud800"}'), "lone_surrogate"),
]


@pytest.fixture
def admin(admin_user, login_client, client):
    return login_client(admin_user, client)


@pytest.mark.parametrize("name, data, code", LICENCE_CASES, ids=[c[0] for c in LICENCE_CASES])
def test_the_licence_page_refuses_unstorable_text_with_its_own_code(admin, name, data, code):
    before = AuditEvent.objects.count()
    response = admin.post(reverse("licensing:upload"),
                          {"licence_file": SimpleUploadedFile("l.json", data, content_type="application/json")})
    assert response.status_code == 400
    assert AuditEvent.objects.count() == before + 1
    event = AuditEvent.objects.order_by("position").last()
    assert event.action == AuditAction.LICENCE_REFUSED and json.loads(event.details)["code"] == code
    assert not Licence.objects.exists()
    assert audit_chain_verify().ok


def test_the_setup_wizard_licence_step_refuses_a_surrogate_key_id(admin, admin_user):
    from tests.setup.helpers import post_licence, through_preflight

    through_preflight(admin_user)
    before = AuditEvent.objects.count()
    response = post_licence(admin, SimpleUploadedFile("l.json", LICENCE_CASES[0][1], content_type="application/json"))
    assert response.status_code == 400
    assert "not valid Unicode" in response.content.decode()
    assert AuditEvent.objects.count() == before + 1
    assert json.loads(AuditEvent.objects.order_by("position").last().details)["code"] == "lone_surrogate"
    assert not Licence.objects.exists()
    assert audit_chain_verify().ok
