"""``manage.py audit_verify`` against a real audit table, tampered with the way
someone with database access would: each damage is named at its exact position."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.models import AuditEvent, AuditHead
from pamportal.audit.services import audit_record
from pamportal.core.context import acting

from .tampering import insert, rehash, row, shift, sql, triggers_off

pytestmark = pytest.mark.django_db
EVENTS = 20


@pytest.fixture
def trail(db):
    with acting(actor_id=5, actor_name="alice", source_ip="192.0.2.5", request_id="req"):
        for n in range(EVENTS):
            with transaction.atomic():
                audit_record(
                    action=AuditAction.LOGIN_FAILED if n % 3 else AuditAction.LOGIN_SUCCEEDED,
                    target=f"user:u{n}",
                    outcome=Outcome.DENIED if n % 3 else Outcome.SUCCEEDED,
                    details={"n": n},
                )
    assert AuditEvent.objects.count() == EVENTS


def verify() -> str:
    out = StringIO()
    call_command("audit_verify", stdout=out)
    return out.getvalue()


def broken_at(position: int):
    return pytest.raises(CommandError, match=rf"audit chain broken at position {position}:")


def test_intact_chain_reports_count_and_head(trail):
    output = verify()
    head = AuditHead.objects.get(pk=1)
    assert re.search(rf"verified {EVENTS} events\b", output)
    assert head.position == EVENTS and head.hash in output


def test_empty_chain_verifies(db):
    assert "verified 0 events" in verify()


def test_events_chain_from_their_predecessor(trail):
    hashes = list(AuditEvent.objects.order_by("position").values_list("prev_hash", "hash"))
    assert all(hashes[i][0] == hashes[i - 1][1] for i in range(1, len(hashes)))
    assert AuditHead.objects.get(pk=1).hash == hashes[-1][1]


def test_edited_row(trail):
    with triggers_off():
        sql("UPDATE audit_auditevent SET target = 'user:mallory' WHERE position = 17")
    with broken_at(17):
        verify()


def test_deleted_row(trail):
    with triggers_off():
        sql("DELETE FROM audit_auditevent WHERE position = 17")
    with broken_at(17):
        verify()


def test_deleted_row_with_later_rows_renumbered(trail):
    with triggers_off():
        sql("DELETE FROM audit_auditevent WHERE position = 17")
        shift(18, -1)
        sql("UPDATE audit_audithead SET position = position - 1")
    with broken_at(17):
        verify()


def test_inserted_row(trail):
    intruder = row(17) | {"target": "user:mallory", "action": AuditAction.USER_CREATED.value,
                          "outcome": Outcome.SUCCEEDED.value, "prev_hash": row(16)["hash"]}
    intruder["hash"] = rehash(intruder)
    with triggers_off():
        shift(17, 1)
        insert(intruder)
    with broken_at(17) as error:
        verify()
    assert "inserted" in str(error.value)


def test_swapped_rows(trail):
    with triggers_off():
        sql("UPDATE audit_auditevent SET position = -1 WHERE position = 17")
        sql("UPDATE audit_auditevent SET position = 17 WHERE position = 18")
        sql("UPDATE audit_auditevent SET position = 18 WHERE position = -1")
    with broken_at(17):
        verify()


def test_forged_row_with_its_hash_recomputed(trail):
    forged = row(17) | {"outcome": Outcome.SUCCEEDED.value, "details": '{"n":16,"note":"nothing to see"}'}
    forged["hash"] = rehash(forged)
    with triggers_off():
        sql("UPDATE audit_auditevent SET outcome = %s, details = %s, hash = %s WHERE position = 17",
            [forged["outcome"], forged["details"], forged["hash"]])
    with broken_at(17):
        verify()


def test_last_row_deleted(trail):
    with triggers_off():
        sql("DELETE FROM audit_auditevent WHERE position = %s", [EVENTS])
    with broken_at(EVENTS) as error:
        verify()
    assert "chain head" in str(error.value)


def test_last_row_forged(trail):
    forged = row(EVENTS) | {"target": "user:nobody"}
    forged["hash"] = rehash(forged)
    with triggers_off():
        sql("UPDATE audit_auditevent SET target = %s, hash = %s WHERE position = %s",
            [forged["target"], forged["hash"], EVENTS])
    with broken_at(EVENTS):
        verify()


def test_row_appended_behind_the_portals_back(trail):
    extra = row(EVENTS) | {"position": EVENTS + 1, "prev_hash": row(EVENTS)["hash"], "target": "user:mallory"}
    extra["hash"] = rehash(extra)
    insert(extra)  # inserting is allowed by the triggers; only the head was not moved
    with broken_at(EVENTS + 1):
        verify()


def test_failed_verification_records_nothing(trail):
    with triggers_off():
        sql("DELETE FROM audit_auditevent WHERE position = 3")
    head_before = AuditHead.objects.values_list("position", "hash").get(pk=1)
    with broken_at(3):
        call_command("audit_verify", record=True, stdout=StringIO())
    assert AuditHead.objects.values_list("position", "hash").get(pk=1) == head_before
    assert not AuditEvent.objects.filter(action=AuditAction.AUDIT_VERIFIED).exists()


def test_record_option_appends_a_verified_event(trail):
    call_command("audit_verify", record=True, stdout=StringIO())
    event = AuditEvent.objects.get(position=EVENTS + 1)
    assert event.action == AuditAction.AUDIT_VERIFIED and f'"verified":{EVENTS}' in event.details
    assert f"verified {EVENTS + 1} events" in verify()
