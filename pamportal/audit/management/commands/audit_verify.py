"""``manage.py audit_verify``: walk the audit chain and name the first damaged event."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from pamportal.audit.actions import AuditAction
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

    def handle(self, *args, record: bool = False, **options):
        started = time.perf_counter()
        result = audit_chain_verify()
        elapsed = time.perf_counter() - started
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
