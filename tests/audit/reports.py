"""Helpers for the export tests: a trail with awkward content, and an export written
to files the verifiers read."""

from __future__ import annotations

from pathlib import Path

from django.db import transaction

from pamportal.audit import conf
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.exports import audit_export_create, audit_export_run
from pamportal.audit.services import audit_record
from pamportal.core.context import acting

AWKWARD_TARGETS = [
    "=HYPERLINK(\"http://evil\",\"x\")",
    "+1+1",
    "-2",
    "@SUM(A1)",
    "\tTAB",
    "'quoted",
    "comma, and \"quotes\"",
    "plain",
    "ünïcödé ✓",
]


def make_trail(count: int, *, actor: str = "alice") -> None:
    with acting(actor_id=5, actor_name=actor, source_ip="192.0.2.5", request_id="req-1"):
        for n in range(count):
            with transaction.atomic():
                audit_record(
                    action=AuditAction.LOGIN_FAILED if n % 3 else AuditAction.LOGIN_SUCCEEDED,
                    outcome=Outcome.DENIED if n % 3 else Outcome.SUCCEEDED,
                    target=AWKWARD_TARGETS[n % len(AWKWARD_TARGETS)] + f" #{n}",
                    details={"n": n, "note": "=cmd|' /C calc'!A0" if n == 4 else "ok"},
                )


# Every line break a reader may split on, each followed by what a spreadsheet would run.
LINE_BREAK_TARGETS = [
    "lone cr\r=9+9",
    "crlf\r\n=1+1",
    "lf\n+2",
    "ends with cr\r",
    "\r@leading cr",
    "u2028\u2028-3",
    "nel\x85=4",
    "u2029\u2029@x",
    "cr cr\r\r=5",
    "quote \"and\r\n'apostrophe",
    "comma,\r\n=HYPERLINK(\"http://evil\",\"x\")",
    "ünïcödé ✓ Ærøskøbing 日本",
]
FAILED_LOGIN_USERNAME = "x\r=9+9"


def make_line_break_trail(client=None) -> None:
    """A failed login (no session needed) whose username holds a CR, when ``client`` is
    given, then one event per value of LINE_BREAK_TARGETS."""
    if client is not None:
        from django.urls import reverse

        client.post(reverse("accounts:login"), {"username": FAILED_LOGIN_USERNAME, "password": "wrong password"})
    with acting(actor_id=None, actor_name="mallory\r=2+2", source_ip="192.0.2.9", request_id="req-br"):
        for target in LINE_BREAK_TARGETS:
            with transaction.atomic():
                audit_record(action=AuditAction.LOGIN_FAILED, outcome=Outcome.DENIED, target=target,
                             details={"username": target})


def export_to(tmp: Path, *, fmt: str = "csv", filters: dict | None = None, user=None) -> tuple[Path, Path, dict]:
    """Export, run it at once, and return (file, manifest file, manifest)."""
    import json

    export = audit_export_create(user=user, format=fmt, filters=filters or {})
    export = audit_export_run(export_id=export.pk)
    tmp.mkdir(parents=True, exist_ok=True)
    file_path = tmp / export.file_name
    file_path.write_bytes((conf.export_dir() / export.file_name).read_bytes())
    manifest_path = tmp / (export.file_name + ".manifest.json")
    manifest_path.write_text(export.manifest, encoding="utf-8")
    return file_path, manifest_path, json.loads(export.manifest)
