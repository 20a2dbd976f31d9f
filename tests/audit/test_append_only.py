"""The audit table refuses changes in the database itself, whatever the application
code tries, and an action whose audit write fails leaves nothing behind."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, transaction

from pamportal.audit import chain
from pamportal.audit.actions import AuditAction
from pamportal.audit.models import AuditEvent, AuditHead
from pamportal.audit.services import audit_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def event(db):
    return audit_record(action=AuditAction.LOGIN_SUCCEEDED, target="user:alice")


@pytest.mark.postgres
def test_postgres_refuses_update(event):
    from django.db.utils import InternalError

    with pytest.raises((InternalError, DatabaseError), match="append-only: UPDATE refused"):
        with transaction.atomic():
            AuditEvent.objects.filter(position=event.position).update(target="user:mallory")
    assert AuditEvent.objects.get(position=event.position).target == "user:alice"


@pytest.mark.postgres
def test_postgres_refuses_delete(event):
    with pytest.raises(DatabaseError, match="append-only: DELETE refused"):
        with transaction.atomic():
            AuditEvent.objects.filter(position=event.position).delete()
    assert AuditEvent.objects.filter(position=event.position).exists()


@pytest.mark.postgres
def test_postgres_refuses_truncate(event):
    with pytest.raises(DatabaseError, match="append-only: TRUNCATE refused"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("TRUNCATE audit_auditevent")
    assert AuditEvent.objects.filter(position=event.position).exists()


@pytest.mark.postgres
def test_postgres_triggers_fire_even_for_replication_sessions(event):
    # ENABLE ALWAYS: a session in replica mode (which skips ordinary triggers) is refused too.
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
            cursor.execute("DELETE FROM audit_auditevent")


def test_update_and_delete_are_refused(event):
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic():
            AuditEvent.objects.filter(position=event.position).update(target="user:mallory")
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic():
            AuditEvent.objects.filter(position=event.position).delete()
    assert AuditEvent.objects.get(position=event.position).target == "user:alice"


def test_action_whose_audit_write_fails_changes_nothing(db, monkeypatch):
    from pamportal.accounts.services import user_create

    def broken_hash(*args, **kwargs):
        raise RuntimeError("audit store unavailable")

    head_before = AuditHead.objects.values_list("position", "hash").get(pk=1)
    monkeypatch.setattr(chain, "event_hash", broken_hash)
    with pytest.raises(RuntimeError, match="audit store unavailable"):
        user_create(username="bob", role="operator", password="a long enough password 1")
    assert not get_user_model().objects.filter(username="bob").exists()
    assert AuditHead.objects.values_list("position", "hash").get(pk=1) == head_before
    assert not AuditEvent.objects.exists()

    monkeypatch.undo()  # the same action goes through once the audit write works
    user_create(username="bob", role="operator", password="a long enough password 1")
    assert get_user_model().objects.filter(username="bob").exists()
    assert AuditEvent.objects.get().target == "user:bob"
