"""Sign a licence with the TEST vendor key, for tests and development. Refused under
production settings, where test-key licences are refused anyway."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pamportal.crypto import licence as licence_format


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


def _moment(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


class Command(BaseCommand):
    help = "Mint a licence file signed with the TEST vendor key (development and tests only)."
    requires_system_checks: list = []

    def add_arguments(self, parser):
        parser.add_argument("--customer", required=True)
        parser.add_argument("--edition", required=True)
        parser.add_argument("--max-nodes", required=True, type=_positive)
        parser.add_argument("--days", required=True, type=_positive, help="days of validity from --not-before")
        parser.add_argument("--features", default="", help="comma-separated feature names")
        parser.add_argument("--not-before", type=_moment, help="ISO 8601 start (default: now, UTC)")
        parser.add_argument("--licence-id", help="default: a new UUID")
        parser.add_argument("--out", type=Path, help="write the licence here (default: standard output)")

    def handle(self, *args, **options):
        if settings.PRODUCTION:
            raise CommandError(
                "licence_mint signs with the TEST vendor key, which production settings refuse; "
                "it does not run with PAM_ENV=production. Production licences come from the vendor."
            )
        not_before = (options["not_before"] or datetime.now(timezone.utc)).replace(microsecond=0)
        features = [name.strip() for name in options["features"].split(",") if name.strip()]
        data = licence_format.mint(
            customer=options["customer"],
            edition=options["edition"],
            max_nodes=options["max_nodes"],
            features=features,
            not_before=not_before,
            not_after=not_before + timedelta(days=options["days"]),
            licence_id=options["licence_id"],
        )
        try:  # the same checks an upload makes, so a bad argument is reported here
            verified = licence_format.verify_licence(data, allow_test_keys=True)
        except licence_format.LicenceError as error:
            raise CommandError(f"Cannot mint this licence: {error.message}") from None
        if options["out"]:
            path: Path = options["out"]
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            self.stderr.write(
                f"Wrote {path}: licence {verified.licence_id} for {verified.customer} "
                f"({verified.edition}, {verified.max_nodes} nodes) until "
                f"{licence_format.format_when(verified.not_after)}, signed with the TEST key."
            )
        else:
            self.stdout.write(data.decode("utf-8"), ending="")
