"""What someone with write access to the database could do to the audit table, done
inside the test's transaction with the append-only triggers briefly off."""

from __future__ import annotations

from contextlib import contextmanager
from importlib import import_module

from django.db import connection

from pamportal.audit import chain

append_only = import_module("pamportal.audit.migrations.0002_append_only")

COLUMNS = chain.FIELDS + ("hash",)
_PG_TRIGGERS = ("audit_event_no_update", "audit_event_no_delete", "audit_event_no_truncate")


@contextmanager
def triggers_off():
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER ALL")
        else:
            for statement in append_only.SQLITE_REVERSE:
                cursor.execute(statement)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                for name in _PG_TRIGGERS:
                    cursor.execute(f"ALTER TABLE audit_auditevent ENABLE ALWAYS TRIGGER {name}")
            else:
                for statement in append_only.SQLITE_FORWARD:
                    cursor.execute(statement)


def sql(statement: str, params=()) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def row(position: int) -> dict:
    from pamportal.audit.models import AuditEvent

    return AuditEvent.objects.filter(position=position).values(*COLUMNS).get()


def rehash(values: dict) -> str:
    return chain.event_hash(*(values[name] for name in chain.FIELDS))


def insert(values: dict) -> None:
    names = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    params = [values[name] for name in COLUMNS]
    params[1] = connection.ops.adapt_datetimefield_value(values["time"])
    sql(f"INSERT INTO audit_auditevent ({names}) VALUES ({marks})", params)


def shift(from_position: int, by: int) -> None:
    """Renumber every event from ``from_position`` on by ``by`` (through negative
    positions, as the primary key is checked row by row)."""
    sql("UPDATE audit_auditevent SET position = -(position + %s) WHERE position >= %s", [by, from_position])
    sql("UPDATE audit_auditevent SET position = -position WHERE position < 0")
