"""``manage.py audit_verify``: walk the audit chain and name the first damaged event;
with ``--export FILE --manifest FILE``, check an exported file offline instead."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from pamportal.audit import offline
from pamportal.audit.actions import AuditAction
from pamportal.audit.checkpoints import chain_status_record
from pamportal.audit.selectors import audit_chain_verify
from pamportal.audit.services import audit_record


class Command(BaseCommand):
    help = "Verify the audit hash chain; exit non-zero naming the first bad position."

    def add_arguments(self, parser):
        parser.add_argument(
            "--record",
            action="store_true",
            help="On success, append an 'audit chain verified' event (nothing is recorded on failure).",
        )
        parser.add_argument("--export", help="An exported file (CSV, JSON Lines or PDF) to check offline.")
        parser.add_argument("--manifest", help="The export's signed manifest.")
        parser.add_argument(
            "--public-key", help="The audit key expected to have signed it: key id, base64 or PEM (or @FILE)."
        )

    def handle(self, *args, record: bool = False, export=None, manifest=None, public_key=None, **options):
        if export or manifest:
            return self.verify_export(export, manifest, public_key)
        started = time.perf_counter()
        result = audit_chain_verify()
        elapsed = time.perf_counter() - started
        chain_status_record(result, full=True)
        if not result.ok:
            # Writing anything now would only bury the damage under a new head.
            raise CommandError(
                f"audit chain broken at position {result.first_bad_position}: {result.reason} "
                f"({result.verified} events verified before it)",
                returncode=2,
            )
        rate = result.verified / elapsed if elapsed > 0 else 0.0
        self.stdout.write(
            f"verified {result.verified} events in {elapsed:.2f}s ({rate:,.0f}/s); "
            f"head at position {result.last_position}, hash {result.last_hash}"
        )
        if record:
            with transaction.atomic():
                audit_record(
                    action=AuditAction.AUDIT_VERIFIED,
                    target=f"position {result.last_position}",
                    details={"verified": result.verified, "head_hash": result.last_hash},
                )

    def verify_export(self, export: str | None, manifest: str | None, public_key: str | None) -> None:
        """Nothing here reads the database: the same check as tools/verify_audit_export.py."""
        if not (export and manifest):
            raise CommandError("--export and --manifest go together", returncode=2)
        if public_key and public_key.startswith("@"):
            with open(public_key[1:], encoding="ascii") as handle:
                public_key = handle.read()
        started = time.perf_counter()
        try:
            report = offline.verify(export, manifest, public_key=public_key)
        except offline.Unusable as exc:
            raise CommandError(str(exc), returncode=2) from None
        elapsed = time.perf_counter() - started
        text = offline.describe(report, export)
        if not report.ok:
            raise CommandError(text, returncode=1)
        self.stdout.write(f"{text}\n{report.rows} rows checked in {elapsed:.2f}s")
